"""Paper 21: HiLo reduces to MHSA (alpha=1, no pooling) and to window attention (alpha=0)."""

import math

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.hilo import HiLo


def _softmax_attention(q, k, v):
    return torch.softmax(q @ k.mT / math.sqrt(q.shape[-1]), -1) @ v


def _lofi_reference(m, x):
    """Queries from every token; keys and values from the mean of each pool×pool patch."""
    B, H, W, C = x.shape
    p, h = m.pool, m.lo_heads
    pooled = x.view(B, H // p, p, W // p, p, C).mean((2, 4)).reshape(B, -1, C)  # [B, T/p², C]
    q = m.lo_q(x).view(B, H * W, h, -1).transpose(1, 2)  # [B, h, T, D]
    k, v = m.lo_kv(pooled).view(B, -1, 2, h, m.head_dim).permute(2, 0, 3, 1, 4)
    return m.lo_proj(_softmax_attention(q, k, v).transpose(1, 2).reshape(B, H, W, -1))


def _hifi_reference(m, x):
    """A loop over window×window windows, each attended on its own."""
    B, H, W, _ = x.shape
    w, h = m.window, m.hi_heads
    out = torch.zeros(B, H, W, h * m.head_dim)
    for y in range(0, H, w):
        for xx in range(0, W, w):
            patch = m.hi_qkv(x[:, y : y + w, xx : xx + w]).reshape(B, w * w, 3, h, m.head_dim)
            q, k, v = patch.permute(2, 0, 3, 1, 4)  # [B, h, w², D]
            out[:, y : y + w, xx : xx + w] = _softmax_attention(q, k, v).transpose(1, 2).reshape(B, w, w, -1)
    return m.hi_proj(out)


def test_hilo_alpha_one_without_pooling_equals_full_attention():
    torch.manual_seed(0)
    m = HiLo(16, 2, alpha=1.0, pool=1)
    assert (m.lo_heads, m.hi_heads) == (2, 0)
    x = torch.randn(2, 6, 5, 16)
    q = m.lo_q(x).view(2, 30, 2, 8).transpose(1, 2)
    k, v = m.lo_kv(x).view(2, 30, 2, 2, 8).permute(2, 0, 3, 1, 4)
    expected = m.lo_proj(_softmax_attention(q, k, v).transpose(1, 2).reshape(2, 6, 5, 16))
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [2, 3])
def test_hilo_alpha_zero_equals_window_attention(window):
    torch.manual_seed(0)
    m = HiLo(16, 2, alpha=0.0, window=window)
    assert (m.lo_heads, m.hi_heads) == (0, 2)
    x = torch.randn(2, 6, 12, 16)
    torch.testing.assert_close(m(x), _hifi_reference(m, x), atol=1e-5, rtol=1e-5)


def test_hilo_concatenates_hi_heads_then_pooled_lo_heads():
    torch.manual_seed(0)
    m = HiLo(32, 4, alpha=0.5)
    x = torch.randn(2, 8, 6, 32)
    expected = torch.cat([_hifi_reference(m, x), _lofi_reference(m, x)], dim=-1)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


def test_hilo_default_alpha_gives_most_heads_to_lo():
    m = mechanisms.get("hilo", dim=40, heads=10)
    assert (m.lo_heads, m.hi_heads, m.window, m.pool) == (9, 1, 2, 2)


def test_hilo_blocked_windows_equal_reference_on_a_larger_grid():
    torch.manual_seed(0)
    m = HiLo(16, 2, alpha=0.5, backend="blocked")
    x = torch.randn(1, 16, 20, 16)
    torch.testing.assert_close(m(x), torch.cat([_hifi_reference(m, x), _lofi_reference(m, x)], dim=-1), atol=1e-5, rtol=1e-5)


def test_hilo_gradcheck():
    torch.manual_seed(0)
    m = HiLo(8, 2, alpha=0.5, backend="reference").double()
    x = torch.randn(1, 4, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hilo_dtypes(dtype):
    torch.manual_seed(0)
    m = HiLo(32, 4).to(dtype)
    out = m(torch.randn(2, 8, 6, 32, dtype=dtype))
    assert out.shape == (2, 8, 6, 32) and out.dtype == dtype and not out.isnan().any()


def test_hilo_bad_options_raise():
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        HiLo(10, 3)
    with pytest.raises(ValueError, match="alpha must be a fraction of heads in \\[0, 1\\]"):
        HiLo(8, 2, alpha=1.5)
    with pytest.raises(ValueError, match="window must be a positive int"):
        HiLo(8, 2, window=0)
    with pytest.raises(ValueError, match="multiples of window=2"):
        HiLo(8, 2, alpha=0.5)(torch.randn(1, 5, 4, 8))
    with pytest.raises(ValueError, match="channels-last"):
        HiLo(8, 2)(torch.randn(1, 8, 4, 4))
