"""ov_component (paper 45): remove one output direction of a head's OV circuit, at the attention site."""

import pytest
import torch

import attnlab
from attnlab.edits.ov_component import RemoveOVComponent
from tests.conftest import tiny_causal_lm

D = 8  # head dim of the tiny llama (32 / 4 heads)


def _head_W_O(model, layer, h):
    return model.model.layers[layer].self_attn.o_proj.weight.detach()[:, h * D : (h + 1) * D].T  # [D, C]: the head adds z @ W_O


def test_removal_takes_exactly_the_direction_out_of_the_heads_contribution():
    model = tiny_causal_lm("llama")
    ids = torch.randint(0, 101, (1, 7))
    W_O = _head_W_O(model, 1, 2)
    u = W_O[0] + 0.5 * W_O[3]  # a direction in the head's output space
    u = u / u.norm()
    with attnlab.capture(model, ["layers.1.attn.out", "layers.1.attn.z"]) as before:
        model(input_ids=ids)
    with attnlab.attach(edits=[RemoveOVComponent("L1H2", direction=u, W_O=W_O)]), attnlab.capture(model, "layers.1.attn.out") as after:
        model(input_ids=ids)
    z = before["layers.1.attn.z"][0, :, 2]  # [T, D] head 2's output
    expected = before["layers.1.attn.out"][0] - torch.outer(z @ W_O @ u, u)  # (I − u uᵀ) applied to the head's z @ W_O
    assert torch.allclose(after["layers.1.attn.out"][0], expected, atol=1e-5)
    assert (after["layers.1.attn.out"] - before["layers.1.attn.out"]).abs().max() > 1e-4


def test_other_layers_are_untouched():
    model = tiny_causal_lm("llama")
    ids = torch.randint(0, 101, (1, 7))
    W_O = _head_W_O(model, 1, 2)
    with attnlab.capture(model, "layers.0.attn.out") as before:
        model(input_ids=ids)
    with attnlab.attach(edits=[RemoveOVComponent("L1H2", direction=W_O[1], W_O=W_O)]), attnlab.capture(model, "layers.0.attn.out") as after:
        model(input_ids=ids)
    assert torch.equal(before["layers.0.attn.out"], after["layers.0.attn.out"])


def test_a_direction_outside_the_heads_output_space_is_refused():
    W_O = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    outside = torch.linalg.svd(W_O.T).U[:, -1]  # orthogonal to the 4 rows of W_O
    with pytest.raises(ValueError, match="not in the head's output space"):
        RemoveOVComponent("L0H0", direction=outside, W_O=W_O)
    with pytest.raises(ValueError, match="name one head"):
        RemoveOVComponent(3, direction=W_O[0], W_O=W_O)
    with pytest.raises(ValueError, match=r"\[D, C\] output projection"):
        RemoveOVComponent("L0H0", direction=W_O[0, :5], W_O=W_O)
