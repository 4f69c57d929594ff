"""Paper 50: tensor (Kronecker) attention over pairs of tokens."""

import pytest
import torch

import attnlab
from attnlab import mechanisms
from attnlab.core import attend
from attnlab.mechanisms.tensor import TensorAttention, tensor_attention
from attnlab.probes import ColumnMass


def _reference(q, k1, k2, v1, v2, scale, causal=False):
    """Explicit triple sum: logits[i, j, l] = Σ_d q_id k1_jd k2_ld · scale, softmax over (j, l)."""
    logits = torch.einsum("bhid,bhjd,bhld->bhijl", q, k1, k2) * scale  # [B, H, T, T, T]
    B, H, T = q.shape[:3]
    if causal:
        i = torch.arange(T)
        seen = (i[None, :, None] <= i[:, None, None]) & (i[None, None, :] <= i[:, None, None])  # [T, T, T]
        logits = logits.masked_fill(~seen, float("-inf"))
    p = torch.softmax(logits.reshape(B, H, T, -1), dim=-1).reshape(logits.shape)
    return torch.einsum("bhijl,bhjd,bhld->bhid", p, v1, v2)


def _inputs(B=2, H=2, T=5, D=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=dtype) for _ in range(5)]


@pytest.mark.parametrize("causal", [False, True])
def test_tensor_attention_matches_triple_sum(causal):
    q, k1, k2, v1, v2 = _inputs()
    out = tensor_attention(q, k1, k2, v1, v2, is_causal=causal)
    torch.testing.assert_close(out, _reference(q, k1, k2, v1, v2, 1 / 4, causal), atol=1e-5, rtol=1e-5)


def test_tensor_attention_with_ones_is_softmax_attention_with_scale_one_over_d():
    q, k1, _, v1, _ = _inputs(T=6, D=8)
    ones = torch.ones_like(k1)
    out = tensor_attention(q, k1, ones, v1, ones, backend="reference")
    explicit = torch.softmax(q @ k1.transpose(-1, -2) / 8, dim=-1) @ v1  # the paper's 1/d, not 1/sqrt(d)
    torch.testing.assert_close(out, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, attend(q, k1, v1, scale=1 / 8, backend="reference"), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, attend(q, k1, v1, backend="reference"), atol=1e-3)  # 1/sqrt(d) would differ


def test_tensor_attention_second_key_set_of_other_length():
    q, k1, v1 = _inputs(T=4)[:3]
    k2, v2 = _inputs(T=3, seed=1)[:2]
    torch.testing.assert_close(tensor_attention(q, k1, k2, v1, v2), _reference(q, k1, k2, v1, v2, 1 / 4), atol=1e-5, rtol=1e-5)


def test_tensor_module_matches_triple_sum():
    torch.manual_seed(0)
    m = TensorAttention(dim=8, heads=2)
    x = torch.randn(2, 5, 8)
    q, k1, k2, v1, v2 = m.qkv(x).view(2, 5, 5, 2, 4).permute(2, 0, 3, 1, 4)  # [5, B, H, T, D]
    expected = m.proj(_reference(q, k1, k2, v1, v2, 1 / 4).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


def test_tensor_causal_module_is_causal():
    torch.manual_seed(1)
    m = TensorAttention(dim=8, heads=2, is_causal=True)
    x = torch.randn(1, 7, 8)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 3, 8)
    torch.testing.assert_close(m(x)[:, :4], m(y)[:, :4], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(m(x)[:, 4:], m(y)[:, 4:])


@pytest.mark.parametrize("causal", [False, True])
def test_tensor_gradcheck(causal):
    torch.manual_seed(2)
    m = TensorAttention(dim=4, heads=2, is_causal=causal, backend="reference").double()
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tensor_dtype_and_shape(dtype):
    torch.manual_seed(3)
    m = TensorAttention(dim=16, heads=4).to(dtype)
    out = m(torch.randn(2, 6, 16, dtype=dtype))
    assert out.shape == (2, 6, 16) and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_tensor_is_a_site_over_pair_keys():
    m = TensorAttention(dim=8, heads=2)
    mass = ColumnMass()
    with attnlab.attach(probes=[mass]):
        m(torch.randn(1, 4, 8))
    assert mass.result()["tensor"]["mass"].shape == (1, 2, 16)  # T² pair keys


def test_tensor_registered():
    assert isinstance(mechanisms.get("tensor", dim=8, heads=2), TensorAttention)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "scale": 0.0}, r"scale must be a positive float or None \(1/d\), got scale=0.0"),
    ],
)
def test_tensor_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TensorAttention(**kwargs)


def test_tensor_attention_causal_needs_one_length():
    q, k1, v1 = _inputs(T=4)[:3]
    k2, v2 = _inputs(T=3)[:2]
    with pytest.raises(ValueError, match=r"is_causal needs one length .* got Tq=4, T1=4, T2=3"):
        tensor_attention(q, k1, k2, v1, v2, is_causal=True)


def test_tensor_wrong_width_raises():
    with pytest.raises(ValueError, match=r"x must be \[batch, tokens, 8\], got shape \(3, 8\)"):
        TensorAttention(dim=8, heads=2)(torch.randn(3, 8))
