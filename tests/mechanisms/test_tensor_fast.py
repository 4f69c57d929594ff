"""Paper 50: fast tensor attention (polynomial method), factored vs explicit pairs, and its error."""

import math

import pytest
import torch

from attnlab import mechanisms
from attnlab.mechanisms.tensor import tensor_attention
from attnlab.mechanisms.tensor_fast import TensorFast, tensor_fast, tensor_pairs_poly


def _loops(q, k1, k2, v1, v2, scale, degree):
    """Σ_{j,l} P(s)(v1_j ∘ v2_l) / Σ_{j,l} P(s), P the Taylor polynomial of exp, one pair at a time."""
    B, H, T, _ = q.shape
    out = torch.zeros(B, H, T, v1.shape[-1], dtype=q.dtype)
    for i in range(T):
        num, den = 0, 0
        for j in range(k1.shape[2]):
            for l in range(k2.shape[2]):
                s = (q[:, :, i] * k1[:, :, j] * k2[:, :, l]).sum(-1) * scale  # [B, H]
                w = sum(s**p / math.factorial(p) for p in range(degree + 1))
                num = num + w[..., None] * v1[:, :, j] * v2[:, :, l]
                den = den + w
        out[:, :, i] = num / den[..., None]
    return out


def _qkv(T=5, d=3, D=4, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k1, k2 = (std * torch.randn(3, 1, 2, T, d, generator=g, dtype=torch.float64)).unbind(0)
    v1, v2 = torch.randn(2, 1, 2, T, D, generator=g, dtype=torch.float64).unbind(0)
    return q, k1, k2, v1, v2


@pytest.mark.parametrize("degree", [2, 4])
def test_fast_and_pairs_equal_pair_by_pair_sums(degree):
    args = _qkv()
    want = _loops(*args, scale=0.5, degree=degree)
    torch.testing.assert_close(tensor_fast(*args, scale=0.5, degree=degree), want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tensor_pairs_poly(*args, scale=0.5, degree=degree), want, atol=1e-10, rtol=1e-10)


def test_fast_error_against_softmax_tensor_attention_falls_with_degree():
    """Taylor's remainder: for |s| ≲ 0.5 the error of degree 2, 4, 6 falls, and degree 6 is within 1e-4."""
    args = _qkv(T=6, d=4, std=0.6, seed=1)
    exact = tensor_attention(*args, scale=0.5, backend="reference")
    errors = [(tensor_fast(*args, scale=0.5, degree=p) - exact).abs().max().item() for p in (2, 4, 6)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4, errors


def test_fast_with_unit_second_keys_is_taylor_linear_attention():
    """k2 = v2 = 1: every pair (j, ·) scores as k1_j, so it is linear attention with P(q·k1_j·scale) weights."""
    q, k1, _, v1, _ = _qkv(seed=2)
    ones = torch.ones_like(k1)
    s = torch.einsum("bhid,bhjd->bhij", q, k1) * 0.5
    w = 1 + s + s**2 / 2
    want = torch.einsum("bhij,bhjd->bhid", w, v1) / w.sum(-1, keepdim=True)
    torch.testing.assert_close(tensor_fast(q, k1, ones, v1, torch.ones_like(v1), scale=0.5), want, atol=1e-12, rtol=1e-12)


def test_tensor_fast_module_forms_agree_float64():
    torch.manual_seed(3)
    m = TensorFast(dim=8, heads=2, feature_dim=3, degree=4).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    y = m(x)
    m.form = "pairs"
    torch.testing.assert_close(y, m(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("form", ["fast", "pairs"])
def test_tensor_fast_gradcheck(form):
    torch.manual_seed(4)
    m = TensorFast(dim=4, heads=2, form=form, feature_dim=2).double()
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_tensor_fast_registered():
    assert isinstance(mechanisms.get("tensor_fast", dim=8, heads=2, degree=4), TensorFast)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, r"dim must be divisible by heads, got dim=10, heads=3"),
        ({"dim": 8, "heads": 2, "form": "recurrent"}, r"form must be one of \('fast', 'pairs'\), got form='recurrent'"),
        ({"dim": 8, "heads": 2, "degree": 3}, r"degree must be an even int ≥ 2 .*got degree=3"),
        ({"dim": 8, "heads": 2, "scale": 0}, r"scale must be a positive float or None"),
        (
            {"dim": 8, "heads": 2, "degree": 8},
            r"degree=8 with feature dimension 8 needs 19,173,961 features .*: lower degree or feature_dim",
        ),
    ],
)
def test_tensor_fast_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TensorFast(**kwargs)


def test_the_pairs_form_takes_any_degree_and_the_function_checks_its_feature_map():
    TensorFast(dim=8, heads=2, form="pairs", degree=8)  # no feature map: T² pairs instead
    q = torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match="needs 19,173,961 features"):
        tensor_fast(q, q, q, q, q, scale=0.1, degree=8)
