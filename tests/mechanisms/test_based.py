"""Paper 56: Based, Taylor linear attention plus a sliding window, parallel vs recurrent."""

import pytest
import torch
from einops import rearrange

from attnlab import mechanisms
from attnlab.mechanisms.based import Based, taylor_features


def test_taylor_features_give_second_order_exp():
    """φ(q)·φ(k) = 1 + s + s²/2 with s = q·k / sqrt(d)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 16, generator=g, dtype=torch.float64).unbind(0)
    s = (q * k).sum(-1) / 4
    torch.testing.assert_close((taylor_features(q) * taylor_features(k)).sum(-1), 1 + s + s**2 / 2, atol=1e-12, rtol=1e-12)


def _reference(m: Based, x: torch.Tensor) -> torch.Tensor:
    """Per-token normalised sums of 1 + s + s²/2 over s ≤ t, plus softmax over the window t − w ≤ s ≤ t."""
    B, T, C = x.shape
    H, d = m.heads, m.feature_dim
    q, k = rearrange(m.qk(x), "b t (two h d) -> two b h t d", two=2, h=H)
    v = rearrange(m.v(x), "b t (h d) -> b h t d", h=H)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) / d**0.5
    w = (1 + s + s**2 / 2).tril()
    lin = torch.einsum("bhts,bhsd->bhtd", w, v) / w.sum(-1, keepdim=True)
    qw, kw, vw = rearrange(m.qkv(x), "b t (three h d) -> three b h t d", three=3, h=H)
    i = torch.arange(T)
    band = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= m.window)
    logits = torch.einsum("bhtd,bhsd->bhts", qw, kw) / (C // H) ** 0.5
    win = torch.einsum("bhts,bhsd->bhtd", logits.masked_fill(~band, float("-inf")).softmax(-1), vw)
    return m.proj(rearrange(lin + win, "b h t d -> b t (h d)"))


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_based_matches_explicit_sums(form):
    torch.manual_seed(1)
    m = Based(dim=8, heads=2, form=form, feature_dim=4, window=3, chunk=4).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_based_recurrent_equals_parallel_float64(chunk):
    torch.manual_seed(2)
    m = Based(dim=8, heads=2, feature_dim=4, window=4, chunk=chunk).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_based_is_causal(form):
    torch.manual_seed(3)
    m = Based(dim=8, heads=2, form=form, feature_dim=4, window=2, chunk=4)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_based_gradcheck(form):
    torch.manual_seed(4)
    m = Based(dim=4, heads=2, form=form, feature_dim=2, window=2, chunk=2).double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_based_registered():
    assert isinstance(mechanisms.get("based", dim=8, heads=2, window=8), Based)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "form": "fft"}, r"form must be one of \('parallel', 'recurrent'\), got form='fft'"),
        ({"dim": 8, "heads": 2, "window": 0}, r"window must be a positive int, got window=0"),
        ({"dim": 8, "heads": 2, "feature_dim": 0}, r"feature_dim must be a positive int, got feature_dim=0"),
    ],
)
def test_based_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Based(**kwargs)
