"""The attnlab processor against diffusers' default one on tiny random-weight models; site names; errors."""

import pytest
import torch

from attnlab import attach
from attnlab.core import Edit
from attnlab.models import diffusers as ad

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402


def tiny_unet() -> "diffusers.UNet2DConditionModel":
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=32,
    ).eval()  # fmt: skip


def tiny_pixart() -> "diffusers.PixArtTransformer2DModel":
    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8, patch_size=2,
        cross_attention_dim=16, caption_channels=12,
    ).eval()  # fmt: skip


def _both(model, run):
    """``run(model)`` with diffusers' default processor, then with attnlab's."""
    with torch.no_grad():
        for _, m in ad._attention_modules(model):
            m.set_processor(AttnProcessor2_0())
        want = run(model)
        with ad.instrumented(model):
            got = run(model)
    return want, got


@pytest.mark.parametrize("masked", [False, True])
def test_unet_matches_diffusers_default_processor(masked):
    unet = tiny_unet()
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]) if masked else None
    want, got = _both(unet, lambda m: m(x, 3, encoder_hidden_states=text, encoder_attention_mask=keep).sample)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_pixart_transformer_matches_diffusers_default_processor(masked):
    model = tiny_pixart()
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 12)
    keep = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]) if masked else None
    extra = {"resolution": None, "aspect_ratio": None}
    want, got = _both(
        model,
        lambda m: (
            m(x, encoder_hidden_states=text, timestep=torch.tensor([3, 3]), encoder_attention_mask=keep, added_cond_kwargs=extra).sample
        ),
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_dit_transformer_matches_diffusers_default_processor():
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=8, patch_size=2
    ).eval()
    x = torch.randn(2, 4, 8, 8)
    want, got = _both(model, lambda m: m(x, timestep=torch.tensor([3, 3]), class_labels=torch.tensor([1, 2])).sample)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_attention_module_matches_default_processor_with_masks(cross, mask):
    torch.manual_seed(1)
    attn = Attention(query_dim=32, cross_attention_dim=16 if cross else None, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(2, 6, 32), torch.randn(2, 7, 16) if cross else None
    Tk = 7 if cross else 6
    m = None
    if mask == "bool":
        m = torch.ones(2, 1, Tk, dtype=torch.bool)
        m[0, 0, -3:] = False
    elif mask == "float":
        m = torch.randn(2, 1, Tk)
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        want = attn(x, ctx, attention_mask=m)
        attn.set_processor(ad.Processor(ad.Site(name="attn"), ad._Input()))
        got = attn(x, ctx, attention_mask=m)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_unet_sites_are_named_after_module_paths_with_their_grid():
    unet = ad.instrument(tiny_unet())
    names = [s.name for s in ad.sites(unet)]
    assert names[:2] == ["down.0.0.0.attn1", "down.0.0.0.attn2"]
    assert "mid.0.0.attn2" in names and "up.1.1.0.attn1" in names
    seen = {}

    class Grids(Edit):
        stage = "output"

        def at(self, site):
            seen[site.name] = site.grid

    with torch.no_grad(), attach(edits=[Grids()]):
        unet(torch.randn(1, 4, 8, 8), 1, encoder_hidden_states=torch.randn(1, 3, 16))
    assert seen["down.0.0.0.attn2"] == (8, 8) and seen["mid.0.0.attn1"] == (4, 4)


def test_transformer_sites_take_the_patch_grid():
    model = ad.instrument(tiny_pixart())
    assert [s.name for s in ad.sites(model)] == ["blocks.0.attn1", "blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"]
    proc = model.transformer_blocks[0].attn1.processor
    proc.shape.hw = (8, 8)
    assert proc.grid(16) == (4, 4) and proc.grid(15) is None  # patch size 2: 4 × 4 tokens


def test_sites_of_a_model_not_instrumented_are_refused():
    with pytest.raises(ValueError, match="not routed through attnlab"):
        ad.sites(tiny_pixart())


def test_site_names_of_transformer_models():
    assert ad.site_name("transformer_blocks.3.attn1") == "blocks.3.attn1"
    assert ad.site_name("up_blocks.1.attentions.2.transformer_blocks.0.attn2") == "up.1.2.0.attn2"


def test_a_model_without_diffusers_attention_is_refused():
    with pytest.raises(ValueError, match="no diffusers Attention module"):
        ad.instrument(torch.nn.Linear(2, 2))


def test_a_non_default_processor_is_refused():
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    unet = tiny_unet()
    unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.set_processor(AttnAddedKVProcessor())
    with pytest.raises(ValueError, match="AttnAddedKVProcessor, not diffusers' default"):
        ad.instrument(unet)


def test_probes_observe_every_site_by_name():
    from attnlab.probes import Entropy

    unet = ad.instrument(tiny_unet())
    probe = Entropy()
    with torch.no_grad(), attach(probes=[probe]):
        unet(torch.randn(1, 4, 8, 8), 3, encoder_hidden_states=torch.randn(1, 5, 16))
    assert sorted(probe.result()) == sorted(s.name for s in ad.sites(unet))
    assert probe.result()["mid.0.0.attn1"]["rows"].tolist() == [16.0] * 8  # 4 × 4 queries, 8 heads
