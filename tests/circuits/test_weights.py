"""Per-head weights rebuild what the model computes: v from the attention input, attn.out from attn.z."""

import pytest
import torch

import attnlab
from attnlab.circuits import head_weights
from attnlab.circuits.weights import _modules
from attnlab.models.tiny import TinyTransformer
from tests.conftest import tiny_causal_lm

FAMILIES = ["llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2", "bert", "tiny", "tiny_gqa"]


def _model(family):
    if family.startswith("tiny"):
        torch.manual_seed(0)
        options = {"kv_heads": 2} if family == "tiny_gqa" else None
        return TinyTransformer(13, dim=16, heads=4, layers=2, mechanism_options=options).eval()
    return tiny_causal_lm(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_weights_rebuild_values_and_attention_output(family):
    model = _model(family).double()
    attnlab.hook_points(model)  # instruments an HF model
    layer = 1
    w = head_weights(model, layer)
    q_proj = _modules(model, layer)[0][0]
    seen = {}
    handle = q_proj.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    ids = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(1))
    points = [f"layers.{layer}.attn.v", f"layers.{layer}.attn.z", f"layers.{layer}.attn.out"]
    with torch.no_grad(), attnlab.capture(model, points) as cache:
        model(input_ids=ids) if not family.startswith("tiny") else model(ids)
    handle.remove()
    x = seen["x"]  # [B, T, C] the normalised input the projections read
    v = torch.einsum("btc,hcd->bhtd", x, w.W_V) + w.b_V[None, :, None]  # [B, H, T, D]
    H, Hkv = w.heads, w.kv_heads
    expected_v = cache[f"layers.{layer}.attn.v"].repeat_interleave(H // Hkv, dim=1)  # [B, H, T, D]
    torch.testing.assert_close(v, expected_v, rtol=1e-10, atol=1e-10)
    out = torch.einsum("bthd,hdc->btc", cache[f"layers.{layer}.attn.z"], w.W_O) + w.b_O  # [B, T, C]
    if family in ("gemma2", "gemma3"):  # attn.out is post_attention_layernorm(o_proj(z))
        out = model.model.layers[layer].post_attention_layernorm(out)
    torch.testing.assert_close(out, cache[f"layers.{layer}.attn.out"], rtol=1e-10, atol=1e-10)


def test_head_weights_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        head_weights(_model("tiny"), 2)
    with pytest.raises(ValueError, match="'mha' mechanism"):
        head_weights(TinyTransformer(11, dim=16, heads=2, layers=1, mechanism="linear"), 0)
    with pytest.raises(TypeError, match="TinyTransformer and llama"):
        head_weights(torch.nn.Linear(2, 2), 0)
