"""Region edits on a tiny diffusers UNet: isolation (paper 16), region-constrained cross-attention and self-attention injection (paper 36)."""

import pytest
import torch

from attnlab import attach
from attnlab.edits.inject_self_attention import InjectSelfAttention
from attnlab.edits.isolate_subjects import IsolateSubjects
from attnlab.edits.region_cross_attention import RegionCrossAttention
from attnlab.operators.guidance import AttentionMaps

diffusers = pytest.importorskip("diffusers")
from attnlab.models import diffusers as ad  # noqa: E402
from tests.models.test_diffusers import tiny_unet  # noqa: E402

LATENT = 8


def _run(unet, edits, maps, x=None, text=None):
    torch.manual_seed(3)
    x = torch.randn(1, 4, LATENT, LATENT) if x is None else x
    text = torch.randn(1, 6, 16) if text is None else text
    with torch.no_grad(), attach(edits=[*edits, maps]):
        return unet(x, 5, encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def unet():
    return ad.instrument(tiny_unet())


def test_isolation_leaves_zero_attention_between_subjects(unet):
    groups = torch.zeros(LATENT, LATENT, dtype=torch.long)
    groups[:4, :4], groups[4:, 4:] = 1, 2
    maps = AttentionMaps("*.attn1")
    _run(unet, [IsolateSubjects(groups)], maps)
    assert set(maps.probs) == {s.name for s in ad.sites(unet) if s.name.endswith("attn1")}
    for name, p in maps.probs.items():
        h, w = maps.grids[name]
        g = groups[LATENT // h // 2 :: LATENT // h, LATENT // w // 2 :: LATENT // w].flatten()  # [h*w] the site's labels
        across = (g[:, None] > 0) & (g[None, :] > 0) & (g[:, None] != g[None, :])  # [Tq, Tk]
        assert across.any() and float(p[..., across].abs().max()) == 0.0
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


def test_region_cross_attention_puts_no_mass_outside_the_region(unet):
    regions = torch.zeros(2, LATENT, LATENT, dtype=torch.bool)
    regions[0, :, :4], regions[1, :, 4:] = True, True
    tokens = [[1, 2], [4]]
    maps = AttentionMaps("*.attn2")
    _run(unet, [RegionCrossAttention(regions, tokens)], maps)
    for name, p in maps.probs.items():
        h, w = maps.grids[name]
        f = LATENT // h
        inside = regions[:, f // 2 :: f, f // 2 :: f].flatten(1)  # [2, h*w]
        for region, toks in zip(inside, tokens):
            assert float(p[:, :, ~region][..., toks].abs().max()) == 0.0
            assert float(p[:, :, region][..., toks].min()) > 0.0


def test_injected_foreground_rows_equal_the_source(unet):
    fg = torch.zeros(LATENT, LATENT, dtype=torch.bool)
    fg[2:6, 2:6] = True
    edit = InjectSelfAttention(fg)
    torch.manual_seed(7)
    with torch.no_grad(), attach(probes=[edit.recorder]):
        unet(torch.randn(1, 4, LATENT, LATENT), 5, encoder_hidden_states=torch.randn(1, 6, 16))
    target = AttentionMaps("down.0.*.attn1")
    _run(unet, [edit], target)
    name = "down.0.0.0.attn1"
    source = torch.softmax(edit.recorder.logits[name], dim=-1)  # [1, H, 64, 64] the source pass's attention
    rows = fg.flatten()
    torch.testing.assert_close(target.probs[name][:, :, rows], source[:, :, rows], atol=1e-6, rtol=0)
    assert not torch.allclose(target.probs[name][:, :, ~rows], source[:, :, ~rows], atol=1e-3)


def test_a_region_mask_of_the_wrong_size_is_refused(unet):
    groups = torch.zeros(6, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"a region mask of size \(6, 6\) does not fit site down\.0\.0\.0\.attn1's grid \(8, 8\)"):
        _run(unet, [IsolateSubjects(groups)], AttentionMaps())


def test_region_cross_attention_needs_one_token_list_per_region():
    with pytest.raises(ValueError, match="got 2 regions but 1 token lists"):
        RegionCrossAttention(torch.zeros(2, LATENT, LATENT, dtype=torch.bool), [[1]])


def test_isolation_outside_a_diffusion_model_is_refused():
    from attnlab.models.tiny import TinyTransformer

    model = TinyTransformer(16, dim=16, heads=2, layers=1)
    with (
        pytest.raises(ValueError, match="has no query grid"),
        attach(edits=[IsolateSubjects(torch.zeros(4, 4, dtype=torch.long), sites="*")]),
    ):
        model(torch.zeros(1, 4, dtype=torch.long))
