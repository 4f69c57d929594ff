"""Every backend against the reference: outputs and gradients, over random shapes and masks."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnlab.core import attend
from attnlab.core.backends import Blocked
from tests.core.strategies import cases

FP32 = {"atol": 1e-5, "rtol": 1e-5}
HALF = {torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}, torch.float16: {"atol": 2e-3, "rtol": 2e-3}}

# Default tiles, small tiles (several tiles and chunks per row), and odd sizes that stream one
# tile per chunk and cut grids into uneven boxes.
BLOCKED = [Blocked(), Blocked(q_tile=16, k_tile=16, kv_chunk=32, grid_tile=8), Blocked(q_tile=7, k_tile=13, kv_chunk=13, grid_tile=3)]


def _grads(c, backend):
    out = attend(c.q, c.k, c.v, backend=backend, **c.kwargs())
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    leaves = [t for t in (c.q, c.k, c.v, c.bias) if t is not None and t.requires_grad]
    return out, torch.autograd.grad(out, leaves, g)


@pytest.mark.parametrize("backend", ["sdpa", *BLOCKED], ids=["sdpa", "blocked", "blocked16", "blocked7x13"])
@given(c=cases())
def test_forward_matches_reference(backend, c):
    ref = attend(c.q, c.k, c.v, backend="reference", **c.kwargs())
    out = attend(c.q, c.k, c.v, backend=backend, **c.kwargs())
    assert not out.isnan().any()
    torch.testing.assert_close(out, ref, **FP32, msg=lambda m: f"{c}\n{m}")


@pytest.mark.parametrize("backend", ["sdpa", *BLOCKED], ids=["sdpa", "blocked", "blocked16", "blocked7x13"])
@given(c=cases(grad=True, max_len=160))
def test_gradients_match_reference(backend, c):
    ref_out, ref_grads = _grads(c, "reference")
    out, grads = _grads(c, backend)
    torch.testing.assert_close(out, ref_out, **FP32)
    for name, g, r in zip("qkvb", grads, ref_grads):
        assert not g.isnan().any(), f"NaN in d{name}"
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4, msg=lambda m, name=name: f"d{name}: {c}\n{m}")


@pytest.mark.parametrize("backend", ["sdpa", BLOCKED[1]], ids=["sdpa", "blocked16"])
@given(c=cases(dtypes=(torch.bfloat16, torch.float16), max_len=160))
def test_half_precision_matches_reference(backend, c):
    ref = attend(c.q, c.k, c.v, backend="reference", **c.kwargs())
    out = attend(c.q, c.k, c.v, backend=backend, **c.kwargs())
    assert out.dtype == c.q.dtype
    torch.testing.assert_close(out.float(), ref.float(), **HALF[c.q.dtype], msg=lambda m: f"{c}\n{m}")


@pytest.mark.parametrize("backend", ["reference", "sdpa", *BLOCKED])
@given(c=cases(grad=True, max_len=64, allow_bias=False), data=st.data())
def test_fully_masked_rows_give_zero_output_and_gradient(backend, c, data):
    lq, lk = c.q.shape[2], c.k.shape[2]
    empty = torch.rand(lq, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))) < 0.5
    mask = ~empty[:, None].expand(lq, lk)  # rows in `empty` see nothing
    out = attend(c.q, c.k, c.v, mask=mask, backend=backend)
    assert (out[:, :, empty] == 0).all()
    gq, gk, gv = torch.autograd.grad(out.sum(), (c.q, c.k, c.v))
    for g in (gq, gk, gv):
        assert not g.isnan().any()
    assert (gq[:, :, empty] == 0).all()


def _nan_math_path(q, k, v, attn_mask=None, scale=None, **_):
    """A math path that gives NaN on rows whose bias is -inf throughout."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(q @ k.transpose(-1, -2) * scale + attn_mask, dim=-1) @ v


def test_sdpa_empty_row_probe_tells_nan_kernels_from_zeroing_ones(monkeypatch):
    from attnlab.core.backends.sdpa import empty_bias_rows_give_zero

    if torch.__version__ >= "2.13":  # measured: both CPU kernels give 0
        assert empty_bias_rows_give_zero.__wrapped__("cpu") is True
    monkeypatch.setattr("attnlab.core.backends.sdpa.F.scaled_dot_product_attention", _nan_math_path)
    assert empty_bias_rows_give_zero.__wrapped__("cpu") is False
    with torch.no_grad():  # the first attend of a process may run without gradients
        assert empty_bias_rows_give_zero.__wrapped__("cpu") is False
    with torch.inference_mode():
        assert empty_bias_rows_give_zero.__wrapped__("cpu") is False


def test_sdpa_zeroes_empty_bias_rows_where_the_kernel_gives_nan(monkeypatch):
    """On a kernel that gives NaN on rows whose bias is all -inf, they become 0; other NaNs stay."""
    monkeypatch.setattr("attnlab.core.backends.sdpa.F.scaled_dot_product_attention", _nan_math_path)
    monkeypatch.setattr("attnlab.core.backends.sdpa.empty_bias_rows_give_zero", lambda device_type: False)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    bias = torch.zeros(1, 2, 4, 4)
    bias[0, 0, 1] = float("-inf")  # row 1 of head 0 sees nothing
    q[0, 1, 2, 0] = float("nan")  # a NaN in the input of a row that sees keys
    out = attend(q, k, v, bias=bias, backend="sdpa")
    assert (out[0, 0, 1] == 0).all()
    assert out[0, 1, 2].isnan().all()
    assert not out[0, 0].isnan().any()


@pytest.mark.parametrize("backend", ["reference", "sdpa", "blocked"])
def test_length_one_query_and_key(backend):
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    out = attend(q, k, v, backend=backend, is_causal=True)
    torch.testing.assert_close(out, v)  # one key: all its value


def test_blocked_float64_gradcheck():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 11, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, 2, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    from attnlab.core import masks as M

    def f(q, k, v, bias):
        return attend(q, k, v, mask=M.sliding_window(3, 2), bias=bias, backend=Blocked(4, 4, 8))

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


def test_blocked_skips_empty_tiles():
    from attnlab.core import masks as M
    from attnlab.core.backends.base import Inputs

    q = torch.randn(1, 1, 4096, 16)
    plan = Blocked(q_tile=128, k_tile=128).plan(Inputs(q, q, q, 0.25, mask=M.sliding_window(256)))
    # Each query tile needs its own tile and the 2 before it (3 of 32): density about 3/32.
    assert plan.density() < 0.1
    assert all(r.k_tiles.numel() <= 3 for r in plan.rows)
