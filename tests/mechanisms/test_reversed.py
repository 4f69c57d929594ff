"""Reversed attention (paper 9, DependencyViT): out = (Aᵀ ⊙ p_head ⊙ m) V, checked against explicit loops."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.reversed import Reversed, child_attention, incoming_mass, reversed_messages


def _reference(m: Reversed, x: torch.Tensor, use_p: bool = True, use_m: bool = True) -> torch.Tensor:
    """The layer written out: A by explicit softmax, messages summed child by child."""
    B, T, C = x.shape
    H, D = m.heads, C // m.heads
    qkv = m.qkv(x).reshape(B, T, 3, H, D)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, D]
    A = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / D**0.5, dim=-1)  # [B, H, child, parent]
    p = torch.softmax(m.selector(x) / m.temperature, dim=-1) if use_p else torch.ones(B, T, H)  # [B, T, H]
    g = torch.sigmoid(m.controller(x))[..., 0] if use_m else torch.ones(B, T)  # [B, T]
    out = torch.zeros(B, T, H, D)
    for j in range(T):  # parent
        for i in range(T):  # child
            out[:, j] += (A[:, :, i, j] * p[:, i] * g[:, i, None])[..., None] * v[:, i]
    return m.proj(out.reshape(B, T, C))


def test_reversed_with_p_and_m_one_is_transposed_attention_times_v():
    torch.manual_seed(0)
    m = Reversed(16, 4, head_selector=False, message_controller=False)
    x = torch.randn(2, 7, 16)
    q, k, v = m.qkv(x).reshape(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)  # [B, H, T, D] each
    A = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    expected = m.proj((A.transpose(-1, -2) @ v).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)
    ones_p, ones_m = torch.ones(2, 4, 7), torch.ones(2, 7)
    torch.testing.assert_close(reversed_messages(A, v, ones_p, ones_m), A.transpose(-1, -2) @ v, atol=1e-6, rtol=1e-6)


def test_reversed_matches_child_by_child_messages():
    torch.manual_seed(1)
    m = Reversed(12, 3)
    x = torch.randn(2, 6, 12)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-5, rtol=1e-5)


def test_reversed_is_not_ordinary_attention():
    torch.manual_seed(2)
    m = Reversed(8, 2, head_selector=False, message_controller=False)
    x = torch.randn(1, 5, 8)
    q, k, v = m.qkv(x).reshape(1, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    gather = m.proj((torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v).transpose(1, 2).reshape(1, 5, 8))
    assert not torch.allclose(m(x), gather, atol=1e-3)


def test_reversed_each_child_outgoing_mass_sums_to_one():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 3, 9, 4, generator=g), torch.randn(2, 3, 9, 4, generator=g)
    A = child_attention(q, k)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 3, 9))
    p = torch.softmax(torch.randn(2, 9, 3, generator=g), -1).transpose(1, 2)  # [B, H, T], sums to 1 over heads
    gate = torch.rand(2, 9, generator=g)
    # every child sends exactly m_i in total, so parents receive Σ_i m_i together
    torch.testing.assert_close(incoming_mass(A, p, gate).sum(-1), gate.sum(-1))
    torch.testing.assert_close(incoming_mass(A, torch.ones(2, 3, 9), torch.ones(2, 9)), A.sum(-2).sum(1))


def test_reversed_gradcheck():
    torch.manual_seed(4)
    m = Reversed(8, 2).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reversed_shape_and_dtype(dtype):
    torch.manual_seed(5)
    m = Reversed(16, 4).to(dtype)
    y = m(torch.randn(2, 11, 16, dtype=dtype))
    assert y.shape == (2, 11, 16) and y.dtype == dtype and not y.isnan().any()


@pytest.mark.parametrize(
    ("kw", "err", "text"),
    [
        ({"dim": 10, "heads": 4}, ValueError, "dim must be divisible by heads, got dim=10, heads=4"),
        ({"dim": 8, "heads": 2, "temperature": 0.0}, ValueError, "temperature must be > 0"),
        ({"dim": 8, "heads": 0}, ValueError, "positive integers"),
    ],
)
def test_reversed_bad_options_raise(kw, err, text):
    with pytest.raises(err, match=text):
        Reversed(**kw)


def test_reversed_bad_input_raises():
    with pytest.raises(ValueError, match=r"x must be \[B, T, C\] with C=8, got shape \(2, 3, 4, 8\)"):
        Reversed(8, 2)(torch.randn(2, 3, 4, 8))


def test_reversed_registered():
    assert isinstance(mechanisms.get("reversed", dim=8, heads=2, temperature=0.5), Reversed)
