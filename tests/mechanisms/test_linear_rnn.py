"""Paper 38 (DSF): the gated linear RNN, chunked scan vs token-by-token recurrence."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.linear_rnn import LinearRNN, diagonal_scan, diagonal_scan_recurrent


def _explicit(lam: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = Σ_{s≤t} (Π_{s<r≤t} λ_r) b_s, the closed form of the recurrence, summed term by term."""
    T = b.shape[1]
    h = torch.zeros_like(b)
    for t in range(T):
        for s in range(t + 1):
            h[:, t] += torch.prod(lam[:, s + 1 : t + 1], dim=1) * b[:, s]
    return h


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])  # token by token, a ragged last chunk, exact chunks, longer than T
def test_diagonal_scan_chunks_equal_explicit_sums(chunk):
    g = torch.Generator().manual_seed(0)
    lam = torch.rand(2, 16, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2, 16, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(diagonal_scan(lam, b, chunk), _explicit(lam, b), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(diagonal_scan_recurrent(lam, b), _explicit(lam, b), atol=1e-12, rtol=1e-12)


def test_diagonal_scan_with_unit_decay_is_a_cumulative_sum():
    b = torch.randn(2, 11, 4, dtype=torch.float64)
    torch.testing.assert_close(diagonal_scan(torch.ones_like(b), b, chunk=4), torch.cumsum(b, dim=1), atol=1e-12, rtol=0)


def test_diagonal_scan_with_zero_decay_is_the_input():
    b = torch.randn(1, 9, 2, dtype=torch.float64)
    torch.testing.assert_close(diagonal_scan(torch.zeros_like(b), b, chunk=4), b, atol=0, rtol=0)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_linear_rnn_recurrent_equals_parallel_float64(chunk):
    torch.manual_seed(1)
    m = LinearRNN(dim=8, heads=2, chunk=chunk).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    torch.testing.assert_close(m.parallel(x), m.recurrent(x), atol=1e-10, rtol=1e-10)


def test_linear_rnn_decay_is_in_unit_interval_and_input_normalised():
    """Λ_t = a^{c·r_t} ∈ (0, 1) and B_t u_t = sqrt(1 − Λ_t²) ⊙ i_t ⊙ u_t, from the projections by hand."""
    torch.manual_seed(2)
    m = LinearRNN(dim=6, heads=1).double()
    x = torch.randn(1, 5, 6, dtype=torch.float64)
    lam, bu = m.system(x)
    u, r, i = m.inp(x).chunk(3, dim=-1)
    want = torch.sigmoid(m.lam) ** (m.c * torch.sigmoid(r))
    torch.testing.assert_close(lam, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(bu, (1 - want**2).sqrt() * torch.sigmoid(i) * u, atol=1e-12, rtol=1e-12)
    assert ((lam > 0) & (lam < 1)).all()


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_linear_rnn_is_causal(form):
    torch.manual_seed(3)
    m = LinearRNN(dim=8, heads=2, form=form, chunk=4)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=0, rtol=0)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_linear_rnn_gradcheck(form):
    torch.manual_seed(4)
    m = LinearRNN(dim=4, heads=2, form=form, chunk=2).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_linear_rnn_registered():
    assert isinstance(mechanisms.get("linear_rnn", dim=8, heads=2, form="recurrent"), LinearRNN)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "form": "scan"}, r"form must be one of \('parallel', 'recurrent'\), got form='scan'"),
        ({"dim": 8, "heads": 2, "chunk": 0}, r"chunk must be a positive int, got chunk=0"),
        ({"dim": 8, "heads": 2, "c": -1.0}, r"c must be a positive number"),
    ],
)
def test_linear_rnn_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearRNN(**kwargs)


def test_diagonal_scan_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"lam and b must have one shape \[B, T, \.\.\.\], got lam=\(1, 3\), b=\(1, 4\)"):
        diagonal_scan(torch.ones(1, 3), torch.ones(1, 4))
