"""Paper 56 (Zoology): BaseConv, the gated short convolution, convolution vs recurrence."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.base_conv import BaseConv


def _reference(m: BaseConv, x: torch.Tensor) -> torch.Tensor:
    """(u W + b₁) ⊙ (Σ_{j<k} h_j u_{t−j} + b₂), the convolution summed tap by tap."""
    conv = torch.zeros_like(x)
    for j in range(min(m.kernel, x.shape[1])):
        conv[:, j:] += m.filter[:, j] * x[:, : x.shape[1] - j]
    return m.out(m.proj(x) * (conv + m.bias))


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
@pytest.mark.parametrize("kernel", [1, 3, 20])  # a pointwise gate, short, longer than T
def test_base_conv_matches_tap_sums(form, kernel):
    torch.manual_seed(0)
    m = BaseConv(dim=6, heads=2, form=form, kernel=kernel).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("block_elements", [1, 2 * 6 * 4, 1 << 18])  # blocks of 1, 4 (9 = 4 + 4 + 1) and all tokens
def test_base_conv_token_blocks_match_tap_sums(block_elements):
    torch.manual_seed(5)
    m = BaseConv(dim=6, heads=2, kernel=3).double()
    m.block_elements = block_elements
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-10, rtol=1e-10)


def test_base_conv_recurrent_equals_parallel_float64():
    torch.manual_seed(1)
    m = BaseConv(dim=8, heads=2, kernel=4).double()
    x = torch.randn(3, 15, 8, dtype=torch.float64)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-10, rtol=1e-10)


def test_base_conv_with_identity_filter_is_a_bilinear_gate():
    """h = δ (one tap of 1), b₂ = 0: y = W_o((u W + b₁) ⊙ u)."""
    torch.manual_seed(2)
    m = BaseConv(dim=4, heads=1, kernel=3).double()
    with torch.no_grad():
        m.filter.zero_()
        m.filter[:, 0] = 1
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), m.out(m.proj(x) * x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_base_conv_is_causal(form):
    torch.manual_seed(3)
    m = BaseConv(dim=8, heads=2, form=form, kernel=3)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_base_conv_gradcheck(form):
    torch.manual_seed(4)
    m = BaseConv(dim=4, heads=2, form=form).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_base_conv_registered():
    assert isinstance(mechanisms.get("base_conv", dim=8, heads=2, kernel=5), BaseConv)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "form": "fft"}, r"form must be one of \('parallel', 'recurrent'\), got form='fft'"),
        ({"dim": 8, "heads": 2, "kernel": 0}, r"kernel must be a positive int, got kernel=0"),
    ],
)
def test_base_conv_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BaseConv(**kwargs)
