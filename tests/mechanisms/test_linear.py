"""Paper 38 (DSF): linear attention, parallel and recurrent forms."""

import pytest
import torch
import torch.nn.functional as F

from attnlab import mechanisms
from attnlab.mechanisms.linear import LinearAttention


def _reference(m: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit per-token sums: y_t = Σ_{s≤t} φ(q_t)·φ(k_s) v_s / Σ_{s≤t} φ(q_t)·φ(k_s), φ = elu + 1."""
    B, T, C = x.shape
    H, D = m.heads, C // m.heads
    q, k, v = m.qkv(x).double().view(B, T, 3, H, D).unbind(2)  # [B, T, H, D] each
    q, k = F.elu(q) + 1, F.elu(k) + 1
    ys = []
    for t in range(T):
        w = torch.einsum("bhd,bshd->bsh", q[:, t], k[:, : t + 1])  # [B, t+1, H]
        y = torch.einsum("bsh,bshd->bhd", w, v[:, : t + 1])  # [B, H, D]
        if m.normalize:
            y = y / w.sum(1)[..., None]
        ys.append(y)
    y = torch.stack(ys, dim=1).reshape(B, T, C)  # [B, T, C]
    return m.proj(y.to(x.dtype))


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_parallel_matches_explicit_sums(normalize):
    torch.manual_seed(0)
    m = LinearAttention(dim=12, heads=3, normalize=normalize)
    x = torch.randn(2, 9, 12)
    torch.testing.assert_close(m.parallel(x), _reference(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_recurrent_equals_parallel_float32(normalize):
    torch.manual_seed(1)
    m = LinearAttention(dim=16, heads=2, normalize=normalize)
    x = torch.randn(3, 17, 16)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 17, 64])  # token by token, a ragged last chunk, one chunk, longer than T
def test_linear_recurrent_chunks_equal_parallel(chunk):
    torch.manual_seed(7)
    m = LinearAttention(dim=8, heads=2, chunk=chunk).double()
    x = torch.randn(2, 17, 8, dtype=torch.float64)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-12, rtol=1e-12)


def test_linear_recurrent_equals_parallel_float64():
    torch.manual_seed(2)
    m = LinearAttention(dim=8, heads=2).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-12, rtol=1e-12)


def test_linear_form_option_selects_forward():
    torch.manual_seed(3)
    m = LinearAttention(dim=8, heads=2, form="recurrent")
    x = torch.randn(1, 6, 8)
    assert torch.equal(m(x), m.recurrent(x))
    m.form = "parallel"
    assert torch.equal(m(x), m.parallel(x))


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_linear_is_causal(form):
    torch.manual_seed(4)
    m = LinearAttention(dim=8, heads=2, form=form)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=0, rtol=0)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_linear_gradcheck(form):
    torch.manual_seed(5)
    m = LinearAttention(dim=4, heads=2, form=form).double()
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_linear_dtype_and_shape(dtype, form):
    torch.manual_seed(6)
    m = LinearAttention(dim=16, heads=4, form=form).to(dtype)
    out = m(torch.randn(2, 7, 16, dtype=dtype))
    assert out.shape == (2, 7, 16) and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_linear_registered():
    assert isinstance(mechanisms.get("linear", dim=8, heads=2, form="recurrent"), LinearAttention)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dim": 10, "heads": 3}, ValueError, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 0}, ValueError, r"heads must be a positive int, got heads=0"),
        ({"dim": 8, "heads": 2, "form": "scan"}, ValueError, r"form must be one of \('parallel', 'recurrent'\), got form='scan'"),
        ({"dim": 8, "heads": 2, "normalize": 1}, TypeError, r"normalize must be a bool"),
        ({"dim": 8, "heads": 2, "chunk": 0}, ValueError, r"chunk must be a positive int, got chunk=0"),
    ],
)
def test_linear_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        LinearAttention(**kwargs)


def test_linear_wrong_width_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 8\], got shape \(1, 3, 6\)"):
        LinearAttention(dim=8, heads=2)(torch.randn(1, 3, 6))
