"""DependencyViT on a grid and DependencyViT-Lite pruning (paper 9)."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.dependency import Dependency, prune_leaves
from attnlab.mechanisms.reversed import Reversed


def _incoming_mass(m: Dependency, tokens: torch.Tensor) -> torch.Tensor:
    """Mass each token receives, written out: Σ_h Σ_i A[h, i, j] · p_h(i) · m(i)."""
    B, T, C = tokens.shape
    H, D = m.heads, C // m.heads
    qkv = m.qkv(tokens).reshape(B, T, 3, H, D)
    A = torch.softmax(torch.einsum("bihd,bjhd->bhij", qkv[:, :, 0], qkv[:, :, 1]) / D**0.5, dim=-1)
    p = torch.softmax(m.selector(tokens) / m.temperature, dim=-1)  # [B, T, H]
    g = torch.sigmoid(m.controller(tokens))[..., 0]  # [B, T]
    mass = torch.zeros(B, T)
    for j in range(T):
        for i in range(T):
            mass[:, j] += (A[:, :, i, j] * p[:, i]).sum(-1) * g[:, i]
    return mass


def test_dependency_equals_sequence_form_on_flattened_grid():
    torch.manual_seed(0)
    grid, seq = Dependency(16, 4), Reversed(16, 4)
    seq.load_state_dict(grid.state_dict())
    x = torch.randn(2, 3, 5, 16)
    torch.testing.assert_close(grid(x), seq(x.reshape(2, 15, 16)).reshape(2, 3, 5, 16), atol=1e-6, rtol=1e-6)


def test_dependency_pruning_keeps_tokens_receiving_most_mass():
    torch.manual_seed(1)
    lite = Dependency(8, 2, keep_ratio=0.4)
    full = Dependency(8, 2)
    full.load_state_dict(lite.state_dict())
    x = torch.randn(2, 4, 5, 8)
    kept, index = lite(x)
    assert kept.shape == (2, 8, 8) and index.shape == (2, 8)
    mass = _incoming_mass(lite, x.reshape(2, 20, 8))
    for b in range(2):
        expected = sorted(torch.argsort(mass[b], descending=True)[:8].tolist())
        assert index[b].tolist() == expected
        dropped = [t for t in range(20) if t not in expected]
        assert mass[b, expected].min() > mass[b, dropped].max()
    torch.testing.assert_close(kept, full(x).reshape(2, 20, 8).gather(1, index[..., None].expand(-1, -1, 8)))


def test_prune_leaves_counts_and_order():
    tokens = torch.arange(10.0).reshape(1, 10, 1)
    mass = torch.tensor([[5.0, 0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0]])
    kept, index = prune_leaves(tokens, mass, 0.35)  # ⌊3.5⌋ = 3 tokens: 2, 4, 6
    assert index.tolist() == [[2, 4, 6]] and kept.flatten().tolist() == [2.0, 4.0, 6.0]
    assert prune_leaves(tokens, mass, 0.01)[1].tolist() == [[2]]  # at least one token survives


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_dependency_gradcheck(keep_ratio):
    torch.manual_seed(2)
    m = Dependency(4, 2, keep_ratio=keep_ratio).double()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x) if keep_ratio == 1.0 else m(x)[0], (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dependency_shape_and_dtype(dtype):
    torch.manual_seed(3)
    m = Dependency(16, 4).to(dtype)
    y = m(torch.randn(2, 3, 4, 16, dtype=dtype))
    assert y.shape == (2, 3, 4, 16) and y.dtype == dtype and not y.isnan().any()
    kept, index = Dependency(16, 4, keep_ratio=0.5).to(dtype)(torch.randn(2, 3, 4, 16, dtype=dtype))
    assert kept.shape == (2, 6, 16) and kept.dtype == dtype and index.dtype == torch.long


@pytest.mark.parametrize("keep_ratio", [0.0, 1.5, -0.2])
def test_dependency_bad_keep_ratio_raises(keep_ratio):
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        Dependency(8, 2, keep_ratio=keep_ratio)


def test_dependency_rejects_sequence_input():
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\] \(channels-last\) with C=8, got shape \(2, 6, 8\)"):
        Dependency(8, 2)(torch.randn(2, 6, 8))


def test_dependency_registered():
    assert isinstance(mechanisms.get("dependency", dim=8, heads=2, keep_ratio=0.5), Dependency)
