"""Attention over concatenated feature and cost tokens (paper 71)."""

import pytest
import torch

from attnlab import operators
from attnlab.operators.feature_cost import FeatureCostAttention


def _reference(m, f, c):
    """Written out: LayerNorm, per-head softmax(QKᵀ/√d)V over the concatenated tokens, output projection, residual."""
    x = torch.cat([f, c], -1)
    B, T, W = x.shape
    H = m.attn.num_heads
    h = torch.nn.functional.layer_norm(x, (W,), m.norm.weight, m.norm.bias)
    q, k, v = (h @ m.attn.in_proj_weight.T + m.attn.in_proj_bias).split(W, -1)
    q, k, v = (t.view(B, T, H, W // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
    a = torch.softmax(q @ k.transpose(-1, -2) / (W // H) ** 0.5, -1) @ v  # (B, H, T, d)
    x = x + a.transpose(1, 2).reshape(B, T, W) @ m.attn.out_proj.weight.T + m.attn.out_proj.bias
    return x[..., : m.dim], x[..., m.dim :]


def test_matches_reference_attention_over_concatenated_tokens():
    torch.manual_seed(0)
    m = FeatureCostAttention(6, 4, heads=2, mlp_ratio=0)
    f, c = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    for got, want in zip(m(f, c), _reference(m, f, c)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_features_steer_how_costs_are_aggregated():
    """The same costs come out differently under different features: attention sees both."""
    torch.manual_seed(1)
    m = FeatureCostAttention(6, 4, heads=2)
    c = torch.randn(1, 7, 4)
    _, c1 = m(torch.randn(1, 7, 6), c)
    _, c2 = m(torch.randn(1, 7, 6), c)
    assert not torch.allclose(c1, c2)


def test_zero_attention_output_is_the_identity():
    torch.manual_seed(2)
    m = FeatureCostAttention(6, 2, heads=2, mlp_ratio=0)
    with torch.no_grad():
        m.attn.out_proj.weight.zero_()
        m.attn.out_proj.bias.zero_()
    f, c = torch.randn(2, 3, 6), torch.randn(2, 3, 2)
    f2, c2 = m(f, c)
    torch.testing.assert_close(f2, f)
    torch.testing.assert_close(c2, c)


def test_permutation_equivariant_over_positions():
    torch.manual_seed(3)
    m = FeatureCostAttention(4, 4, heads=2)
    f, c = torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    perm = torch.randperm(6)
    fp, cp = m(f[:, perm], c[:, perm])
    f0, c0 = m(f, c)
    torch.testing.assert_close(fp, f0[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cp, c0[:, perm], atol=1e-5, rtol=1e-5)


def test_gradcheck():
    torch.manual_seed(4)
    m = FeatureCostAttention(2, 2, heads=2, mlp_ratio=1.0).double()
    f = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: torch.cat(m(a, b), -1), (f, c))


def test_registered():
    assert operators.get("feature_cost_attention") is FeatureCostAttention and FeatureCostAttention.paper == "71"


def test_bad_options_and_inputs_raise():
    with pytest.raises(ValueError, match="divisible by heads"):
        FeatureCostAttention(5, 2, heads=2)
    with pytest.raises(ValueError, match="cost_dim must be"):
        FeatureCostAttention(4, 0)
    with pytest.raises(ValueError, match="mlp_ratio"):
        FeatureCostAttention(4, 4, mlp_ratio=-1)
    m = FeatureCostAttention(4, 4, heads=2)
    with pytest.raises(ValueError, match=r"features must be \[B, T, C\] with C=4"):
        m(torch.randn(1, 3, 5), torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="one cost vector per feature position"):
        m(torch.randn(1, 3, 4), torch.randn(1, 2, 4))
