"""Paper 56: Hyena, long implicit convolutions by FFT vs the direct convolution."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.hyena import Hyena, causal_conv_direct, causal_conv_fft


def _toeplitz(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Σ_{s≤t} h_{t−s} z_s with an explicit lower-triangular Toeplitz matrix per channel."""
    T = z.shape[-1]
    i = torch.arange(T)
    lag = i[:, None] - i[None, :]  # [T, T] t − s
    M = torch.where(lag >= 0, h[:, lag.clamp(min=0)], torch.zeros((), dtype=h.dtype))  # [C, T, T]
    return torch.einsum("cts,bcs->bct", M, z)


@pytest.mark.parametrize("T", [1, 7, 64])
def test_fft_and_direct_convolutions_equal_toeplitz(T):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, T, generator=g, dtype=torch.float64)
    h = torch.randn(3, T, generator=g, dtype=torch.float64)
    torch.testing.assert_close(causal_conv_fft(z, h), _toeplitz(z, h), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(causal_conv_direct(z, h), _toeplitz(z, h), atol=1e-10, rtol=1e-10)


def test_hyena_fft_equals_direct_float64():
    torch.manual_seed(1)
    m = Hyena(dim=8, heads=2, order=3).double()
    x = torch.randn(2, 33, 8, dtype=torch.float64)
    y = m(x)
    m.form = "direct"
    torch.testing.assert_close(y, m(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("block_elements", [1, 2 * 33 * 3, 1 << 19])
def test_hyena_channel_blocks_equal_the_whole_formula(block_elements):
    """Blocks of 1, 3 (uneven: 8 = 3 + 3 + 2) and all 8 channels give z^{n+1} = x^n ⊙ (h^n ∗ z^n + D z^n) on the whole width."""
    torch.manual_seed(5)
    m = Hyena(dim=8, heads=2, order=2).double()
    m.block_elements = block_elements
    x = torch.randn(2, 33, 8, dtype=torch.float64)
    u = m.short(torch.nn.functional.pad(m.inp(x).transpose(1, 2), (2, 0)))  # [B, 3C, T]
    z, *gates = u.chunk(3, dim=1)
    for n, gate in enumerate(gates):
        z = gate * (_toeplitz(z, m.filters[n](33, torch.float64)) + m.skip[n, :, None] * z)
    torch.testing.assert_close(m(x), m.out(z.transpose(1, 2)), atol=1e-10, rtol=1e-10)


def test_hyena_filter_decays_and_extends_to_any_length():
    """The implicit filter at T is the prefix of the filter at 2T, and its envelope decays."""
    torch.manual_seed(2)
    f = Hyena(dim=8, heads=2, max_len=64).double().filters[0]
    h = f(128, torch.float64)
    torch.testing.assert_close(f(64, torch.float64), h[:, :64], atol=0, rtol=0)
    assert h.shape == (8, 128)
    assert (h[:, 96:].abs().amax(-1) < h[:, :32].abs().amax(-1)).all()


@pytest.mark.parametrize("form", ["fft", "direct"])
def test_hyena_is_causal(form):
    torch.manual_seed(3)
    m = Hyena(dim=8, heads=2, form=form)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=1e-5, rtol=0)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("form", ["fft", "direct"])
def test_hyena_gradcheck(form):
    torch.manual_seed(4)
    m = Hyena(dim=4, heads=2, form=form, order=1).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_hyena_registered():
    assert isinstance(mechanisms.get("hyena", dim=8, heads=2, order=1), Hyena)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "form": "recurrent"}, r"form must be one of \('fft', 'direct'\), got form='recurrent'"),
        ({"dim": 8, "heads": 2, "order": 0}, r"order must be a positive int, got order=0"),
    ],
)
def test_hyena_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Hyena(**kwargs)
