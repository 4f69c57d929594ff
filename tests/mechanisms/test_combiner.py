"""Paper 63: Combiner-Fixed (own-segment keys + mean-pooled summaries of other segments, one softmax)."""

import math

import pytest
import torch

import attnlab
from attnlab import mechanisms
from attnlab.mechanisms.combiner import Combiner
from attnlab.probes import Entropy


def _heads(m: Combiner, x: torch.Tensor):
    B, T, C = x.shape
    q, k, v = m.qkv(x).view(B, T, 3, m.heads, C // m.heads).permute(2, 0, 3, 1, 4)  # [B, H, T, D] each
    return q, k, v


def _reference(m: Combiner, x: torch.Tensor, L: int) -> torch.Tensor:
    """Query by query: one softmax over own-segment keys and the mean key of each other (earlier) segment."""
    B, T, C = x.shape
    q, k, v = _heads(m, x)
    D = C // m.heads
    segs = [range(s, min(s + L, T)) for s in range(0, T, L)]
    out = torch.zeros_like(q)
    for i in range(T):
        g = i // L
        own = [j for j in segs[g] if j <= i or not m.is_causal]
        others = [h for h in range(len(segs)) if (h < g if m.is_causal else h != g)]
        keys = [k[:, :, j] for j in own] + [k[:, :, list(segs[h])].mean(2) for h in others]  # each [B, H, D]
        vals = [v[:, :, j] for j in own] + [v[:, :, list(segs[h])].mean(2) for h in others]
        logits = torch.einsum("bhd,nbhd->bhn", q[:, :, i], torch.stack(keys)) / math.sqrt(D)
        out[:, :, i] = torch.einsum("bhn,nbhd->bhd", torch.softmax(logits, -1), torch.stack(vals))
    return m.proj(out.transpose(1, 2).reshape(B, T, C))


def _plain_attention(m: Combiner, x: torch.Tensor, causal: bool) -> torch.Tensor:
    B, T, C = x.shape
    q, k, v = _heads(m, x)
    s = q @ k.transpose(-1, -2) / math.sqrt(C // m.heads)  # [B, H, T, T]
    if causal:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return m.proj((torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("causal", [True, False])
def test_combiner_one_segment_equals_plain_attention(causal):
    torch.manual_seed(0)
    m = Combiner(dim=16, heads=2, segment=9, is_causal=causal)
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(m(x), _plain_attention(m, x, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("T", "L", "causal"), [(12, 4, True), (10, 4, True), (10, 3, False), (7, None, True)])
def test_combiner_matches_query_by_query_reference(T, L, causal):
    torch.manual_seed(1)
    m = Combiner(dim=8, heads=2, segment=L, is_causal=causal)
    x = torch.randn(2, T, 8)
    torch.testing.assert_close(m(x), _reference(m, x, L or math.ceil(math.sqrt(T))), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [12, 11])
def test_combiner_implied_matrix_is_row_stochastic_dense_lower_triangular(T):
    torch.manual_seed(2)
    m = Combiner(dim=8, heads=2, segment=4)
    x = torch.randn(2, T, 8)
    a = m.implied_attention(x)  # [B, H, T, T]
    assert a.shape == (2, 2, T, T)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, T))
    lower = torch.ones(T, T, dtype=torch.bool).tril()
    assert (a[..., lower] > 0).all(), "every earlier token gets weight"
    assert (a[..., ~lower] == 0).all(), "no later token gets weight"


def test_combiner_implied_matrix_reproduces_output():
    torch.manual_seed(3)
    m = Combiner(dim=8, heads=2, segment=3)
    x = torch.randn(2, 10, 8)
    _, _, v = _heads(m, x)
    out = m.proj((m.implied_attention(x) @ v).transpose(1, 2).reshape(2, 10, 8))
    torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)


def test_combiner_bidirectional_implied_matrix_is_dense():
    torch.manual_seed(4)
    m = Combiner(dim=8, heads=2, segment=3, is_causal=False)
    a = m.implied_attention(torch.randn(1, 8, 8))
    assert (a > 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 2, 8))


def test_combiner_is_causal():
    torch.manual_seed(5)
    m = Combiner(dim=8, heads=2, segment=3)
    x = torch.randn(2, 11, 8)
    y = x.clone()
    y[:, 7:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :7], m(y)[:, :7], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(m(x)[:, 7:], m(y)[:, 7:])


def test_combiner_gradcheck():
    torch.manual_seed(6)
    m = Combiner(dim=4, heads=2, segment=2, backend="reference").double()
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_combiner_dtype_and_shape(dtype):
    torch.manual_seed(7)
    m = Combiner(dim=16, heads=4).to(dtype)
    out = m(torch.randn(2, 13, 16, dtype=dtype))
    assert out.shape == (2, 13, 16) and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_combiner_is_a_site():
    torch.manual_seed(8)
    m = Combiner(dim=8, heads=2, segment=3)
    ent = Entropy()
    with attnlab.attach(probes=[ent]):
        m(torch.randn(1, 9, 8))
    assert ent.result()["combiner"]["entropy"].shape == (2,)


def test_combiner_registered():
    assert isinstance(mechanisms.get("combiner", dim=8, heads=2, segment=4), Combiner)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "segment": 0}, r"segment must be a positive int or None \(ceil\(sqrt\(T\)\)\), got segment=0"),
    ],
)
def test_combiner_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Combiner(**kwargs)


def test_combiner_wrong_width_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 8\], got shape \(3, 8\)"):
        Combiner(dim=8, heads=2)(torch.randn(3, 8))
