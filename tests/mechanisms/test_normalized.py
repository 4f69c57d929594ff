"""Paper 38 (DSF): normalised attention y_t = Σ_{s≤t} (q_t·k_s) v_s / exp(n_t), parallel and recurrent."""

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.normalized import NormalizedAttention


def _reference(m: NormalizedAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit per-token sums, with n_t = W_n u_t + b_n per head and no 1/sqrt(D) scale."""
    B, T, C = x.shape
    H, D = m.heads, C // m.heads
    q, k, v = m.qkv(x).double().view(B, T, 3, H, D).unbind(2)  # [B, T, H, D] each
    n = m.norm(x).double()  # [B, T, H]
    ys = []
    for t in range(T):
        w = torch.einsum("bhd,bshd->bsh", q[:, t], k[:, : t + 1])  # [B, t+1, H]
        ys.append(torch.einsum("bsh,bshd->bhd", w, v[:, : t + 1]) / torch.exp(n[:, t])[..., None])  # [B, H, D]
    y = torch.stack(ys, dim=1).reshape(B, T, C)
    return m.proj(y.to(x.dtype))


def test_normalized_parallel_matches_explicit_sums():
    torch.manual_seed(0)
    m = NormalizedAttention(dim=12, heads=3)
    x = torch.randn(2, 9, 12)
    torch.testing.assert_close(m.parallel(x), _reference(m, x), atol=1e-5, rtol=1e-5)


def test_normalized_recurrent_equals_parallel_float32():
    torch.manual_seed(1)
    m = NormalizedAttention(dim=16, heads=2)
    x = torch.randn(3, 17, 16)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 13, 64])
def test_normalized_recurrent_chunks_equal_parallel(chunk):
    torch.manual_seed(8)
    m = NormalizedAttention(dim=8, heads=2, chunk=chunk).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-12, rtol=1e-12)


def test_normalized_recurrent_equals_parallel_float64():
    torch.manual_seed(2)
    m = NormalizedAttention(dim=8, heads=2).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    torch.testing.assert_close(m.recurrent(x), m.parallel(x), atol=1e-12, rtol=1e-12)


def test_normalized_normaliser_divides_each_head():
    """Raising head 0's bias b_n by c divides head 0's contribution by exp(c) and leaves head 1 alone."""
    torch.manual_seed(3)
    m = NormalizedAttention(dim=8, heads=2).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        m.proj.weight.zero_()
        m.proj.weight[:4, :4] = torch.eye(4)  # output channels 0..3 read head 0, nothing else
        m.proj.bias.zero_()
        before = m(x)
        m.norm.bias[0] += 2.0
        after = m(x)
    torch.testing.assert_close(after[..., :4], before[..., :4] * torch.exp(torch.tensor(-2.0, dtype=torch.float64)))


def test_normalized_form_option_selects_forward():
    torch.manual_seed(4)
    m = NormalizedAttention(dim=8, heads=2, form="recurrent")
    x = torch.randn(1, 6, 8)
    assert torch.equal(m(x), m.recurrent(x))


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_normalized_is_causal(form):
    torch.manual_seed(5)
    m = NormalizedAttention(dim=8, heads=2, form=form)
    x = torch.randn(2, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(m(x)[:, :6], m(y)[:, :6], atol=0, rtol=0)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:])


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_normalized_gradcheck(form):
    torch.manual_seed(6)
    m = NormalizedAttention(dim=4, heads=2, form=form).double()
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_normalized_dtype_and_shape(dtype, form):
    torch.manual_seed(7)
    m = NormalizedAttention(dim=16, heads=4, form=form).to(dtype)
    out = m(torch.randn(2, 7, 16, dtype=dtype))
    assert out.shape == (2, 7, 16) and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_normalized_registered():
    assert isinstance(mechanisms.get("normalized", dim=8, heads=2), NormalizedAttention)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 4}, r"dim must be divisible by heads, got dim=10, heads=4"),
        ({"dim": 0, "heads": 1}, r"dim must be a positive int, got dim=0"),
        ({"dim": 8, "heads": 2, "form": "chunked"}, r"form must be one of \('parallel', 'recurrent'\), got form='chunked'"),
        ({"dim": 8, "heads": 2, "chunk": -1}, r"chunk must be a positive int, got chunk=-1"),
    ],
)
def test_normalized_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NormalizedAttention(**kwargs)


def test_normalized_wrong_width_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 8\], got shape \(1, 3, 6\)"):
        NormalizedAttention(dim=8, heads=2)(torch.randn(1, 3, 6))
