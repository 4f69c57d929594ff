"""Attribution patching equals activation patching where the metric is linear in the activation; agreement is reported."""

import pytest
import torch
from torch import nn

import attnlab
from attnlab.circuits import activation_patching, agreement, attribution_patching
from tests.circuits._models import model as make_model
from tests.circuits._models import pairs as make_pairs


def _linear_in_last_z():
    """Attention-only, final norm removed: the logits are affine in the last layer's attn.z (o_proj, residual add, unembed)."""
    model = make_model("tiny_attn_only")
    model.norm = nn.Identity()
    return model


@pytest.mark.parametrize(("per", "direction"), [("head", "denoise"), ("position", "denoise"), ("head_position", "noise")])
def test_attribution_equals_activation_patching_on_a_model_linear_in_the_activation(per, direction):
    model, p = _linear_in_last_z(), make_pairs(4)
    exact = activation_patching(model, p, "layers.1.attn.z", per=per, direction=direction)
    estimate = attribution_patching(model, p, "layers.1.attn.z", per=per, direction=direction, batch_size=3)
    assert exact.table[["point", "head", "position"]].equals(estimate.table[["point", "head", "position"]])
    torch.testing.assert_close(torch.tensor(estimate.grid), torch.tensor(exact.grid), rtol=1e-9, atol=1e-9)
    assert (estimate.clean, estimate.corrupted) == pytest.approx((exact.clean, exact.corrupted), rel=1e-12)
    a = agreement(estimate, exact, k=3)
    assert a["pearson"] == pytest.approx(1.0) and a["spearman"] == pytest.approx(1.0) and a["top_k_overlap"] == 1.0


def test_attribution_is_only_an_estimate_where_the_model_is_not_linear():
    model, p = make_model("tiny"), make_pairs(4)
    exact = activation_patching(model, p, "layers.0.attn.z")
    estimate = attribution_patching(model, p, "layers.0.attn.z")
    assert not torch.allclose(torch.tensor(estimate.grid), torch.tensor(exact.grid), atol=1e-6)
    a = agreement(estimate, exact, k=2)
    assert -1 <= a["pearson"] <= 1 and a["units"] == 4


def test_agreement_refuses_results_over_different_units():
    model, p = make_model("tiny"), make_pairs(3)
    heads = attribution_patching(model, p, "layers.0.attn.z")
    layers = activation_patching(model, p, "layers.0.attn.z", per="layer")
    with pytest.raises(ValueError, match="run both methods on the same points"):
        agreement(heads, layers)


def test_attribution_runs_with_the_weights_frozen_and_gives_their_flags_back():
    model, p = make_model("tiny"), make_pairs(3)
    before = attribution_patching(model, p, "layers.1.attn.z")
    model.layers[0].norm1.weight.requires_grad_(False)  # a mix of flags, each given back as it was
    flags = [q.requires_grad for q in model.parameters()]
    seen = []

    def spy(x, name):
        seen.append(any(q.requires_grad for q in model.parameters()))
        return x

    with attnlab.intervene(model, {"layers.0.resid_post": spy}):
        after = attribution_patching(model, p, "layers.1.attn.z")
    assert seen[0::2] == [True] and seen[1::2] == [False]  # source pass (no_grad), then the target pass: no weight requires grad
    assert [q.requires_grad for q in model.parameters()] == flags
    torch.testing.assert_close(torch.tensor(after.grid), torch.tensor(before.grid), rtol=0, atol=0)
