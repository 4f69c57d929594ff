"""Loss-guided denoising (papers 18, 39): maps recorded with gradients in a tiny UNet, and the latent step."""

import pytest
import torch

from attnlab import attach
from attnlab.operators.astar import astar_segregation
from attnlab.operators.guidance import AttentionMaps, latent_step

diffusers = pytest.importorskip("diffusers")
from attnlab.models import diffusers as ad  # noqa: E402
from tests.models.test_diffusers import tiny_unet  # noqa: E402


def _loss(unet, z, text):
    maps = AttentionMaps()
    with attach(edits=[maps]):
        unet(z, 5, encoder_hidden_states=text)
    return maps, astar_segregation(maps.token_maps([1, 2])).sum()


def test_cross_attention_maps_match_the_reference_and_a_step_lowers_the_loss():
    unet = ad.instrument(tiny_unet())
    torch.manual_seed(0)
    z, text = torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 6, 16)
    maps, loss = _loss(unet, z, text)
    assert set(maps.grids.values()) == {(8, 8), (4, 4)}
    assert maps.token_maps([1, 2]).shape == (1, 2, 8, 8)
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    assert attn.processor.site.name == "mid.0.0.attn2"
    with torch.no_grad():
        x = unet.mid_block.attentions[0].transformer_blocks[0].norm2  # the reference needs attn2's input: capture it
        seen = {}
        handle = x.register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
        unet(z, 5, encoder_hidden_states=text)
        handle.remove()
        want = attn.get_attention_scores(
            attn.head_to_batch_dim(attn.to_q(seen["x"])), attn.head_to_batch_dim(attn.to_k(text))
        )  # [B*H, Tq, Tk]
    torch.testing.assert_close(maps.probs["mid.0.0.attn2"].detach().flatten(0, 1), want, atol=1e-6, rtol=0)
    stepped = latent_step(z, loss, step_size=0.5)
    _, after = _loss(unet, stepped.requires_grad_(True), text)
    assert float(after.detach()) < float(loss.detach())


def test_latent_step_needs_latents_that_require_grad():
    with pytest.raises(ValueError, match="requires_grad_"):
        latent_step(torch.zeros(2), torch.tensor(0.0), 1.0)
