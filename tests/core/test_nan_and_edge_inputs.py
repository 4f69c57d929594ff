"""Issue 16's API cases: NaN in is NaN out on every backend, edge shapes, numpy scalars, clear errors."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import mechanisms
from attnlab.core import attend
from attnlab.core import masks as M
from attnlab.probes import ColumnMass, Entropy

BACKENDS = ["reference", "sdpa", "flex", "blocked", "auto"]


@st.composite
def nan_cases(draw):
    """Random shapes and masks with fully masked rows, and NaN at random places of q, k or v."""
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    Tq, Tk, D = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.sampled_from([1, 4, 8]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    q = torch.randn(B, Hkv * G, Tq, D, generator=gen)
    k, v = torch.randn(B, Hkv, Tk, D, generator=gen), torch.randn(B, Hkv, Tk, D, generator=gen)
    for t in draw(st.lists(st.sampled_from([q, k, v]), min_size=1, max_size=3)):
        idx = tuple(draw(st.integers(0, n - 1)) for n in t.shape)
        t[idx if draw(st.booleans()) else idx[:3]] = float("nan")  # one entry, or a whole row
    kind = draw(st.sampled_from(["none", "causal", "dense", "bias", "predicate"]))
    kw = {}
    if kind == "causal":
        kw["is_causal"] = True
    elif kind in ("dense", "bias"):
        allowed = torch.rand(B, 1, Tq, Tk, generator=gen) < 0.6
        allowed[:, :, torch.rand(Tq, generator=gen) < 0.3] = False  # fully masked rows
        if kind == "dense":
            kw["mask"] = allowed
        else:
            kw["mask"] = M.full
            kw["bias"] = torch.zeros(B, 1, Tq, Tk).masked_fill(~allowed, float("-inf"))
    elif kind == "predicate":
        kw["mask"] = M.sliding_window(draw(st.integers(0, 3))) & M.causal
    return q, k, v, kw


@settings(max_examples=40, deadline=None)
@given(nan_cases())
def test_nan_inputs_give_nan_in_the_same_places_on_every_backend(case):
    q, k, v, kw = case
    ref = attend(q, k, v, backend="reference", **kw)
    seen = torch.ones(q.shape[0], q.shape[1], q.shape[2], k.shape[2], dtype=torch.bool)
    if "mask" in kw and isinstance(kw["mask"], torch.Tensor):
        seen = seen & kw["mask"]
    if "bias" in kw:
        seen = seen & ~torch.isneginf(kw["bias"])
    empty = ~seen.any(-1)  # [B, H, Tq] rows with nothing to see
    assert (ref[empty] == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for backend in BACKENDS[1:]:
            out = attend(q, k, v, backend=backend, **kw)
            torch.testing.assert_close(out, ref, equal_nan=True, msg=lambda m, b=backend: f"{b}: {m}")
            assert (out[empty] == 0).all(), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_query_row_is_nan_and_other_rows_unchanged(backend):
    q, k, v = (torch.randn(1, 2, 4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    clean = attend(q, k, v, is_causal=True, backend=backend)
    q[0, 0, 1] = float("nan")
    out = attend(q, k, v, is_causal=True, backend=backend)
    assert out[0, 0, 1].isnan().all()
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[0, 1] = False
    torch.testing.assert_close(out[0][keep], clean[0][keep])


def test_nan_in_a_hidden_value_does_not_reach_the_rows_that_cannot_see_it():
    q, k, v = (torch.randn(1, 1, 6, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    v[0, 0, 4, 2] = float("nan")  # key 4: causal rows 0-3 cannot see it
    for backend in BACKENDS:
        out = attend(q, k, v, is_causal=True, backend=backend)
        assert not out[0, 0, :4].isnan().any(), backend
        assert out[0, 0, 4:, 2].isnan().all() and not out[0, 0, 4:, [0, 1, 3]].isnan().any(), backend


@pytest.mark.parametrize("probe", [Entropy, ColumnMass])
@pytest.mark.parametrize(("Tq", "Tk"), [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_empty_queries_or_keys_with_a_probe(probe, Tq, Tk, is_causal):
    p = probe()
    out = attend(torch.randn(1, 2, Tq, 8), torch.randn(1, 2, Tk, 8), torch.randn(1, 2, Tk, 8), probes=[p], is_causal=is_causal)
    assert out.shape == (1, 2, Tq, 8) and (out == 0).all()
    p.result()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("B", "D", "Dv"), [(0, 8, 8), (1, 0, 5), (1, 8, 0), (1, 0, 0)])
def test_empty_batch_and_head_dims(backend, B, D, Dv):
    q, k, v = torch.randn(B, 2, 3, D), torch.randn(B, 2, 4, D), torch.randn(B, 2, 4, Dv)
    out = attend(q, k, v, backend=backend, is_causal=True)
    assert out.shape == (B, 2, 3, Dv)
    torch.testing.assert_close(out, attend(q, k, v, backend="reference", is_causal=True))


@pytest.mark.parametrize("scale", [np.float32(0.5), np.float64(0.5), np.float16(0.5), np.int64(1), 0.5, 1, torch.tensor(0.5)])
def test_scale_accepts_any_real_number(scale):
    q = torch.randn(1, 2, 4, 8)
    torch.testing.assert_close(attend(q, q, q, scale=scale), attend(q, q, q, scale=float(scale), backend="reference"))


@pytest.mark.parametrize("scale", [True, np.bool_(True), "0.5", float("nan"), np.float32("inf"), 1j, torch.ones(2)])
def test_scale_refuses_what_is_not_a_finite_real_number(scale):
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match="scale must be a finite float or None"):
        attend(q, q, q, scale=scale)


def test_q_offset_accepts_numpy_integers_and_refuses_others():
    q = torch.randn(1, 2, 4, 8)
    torch.testing.assert_close(attend(q, q, q, q_offset=np.int64(2)), attend(q, q, q, q_offset=2))
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match="q_offset must be an integer"):
            attend(q, q, q, q_offset=bad)


@pytest.mark.parametrize("name", [None, 3, ["mha"]])
def test_mechanism_name_that_is_not_a_string_says_what_a_name_is(name):
    with pytest.raises(TypeError, match=r"a mechanism name is a string such as 'mha', got .*: valid mechanisms are .*mha"):
        mechanisms.get(name, dim=8, heads=2)


@pytest.mark.parametrize("entry", mechanisms.available(), ids=lambda e: e.name)
def test_float64_input_to_a_float32_mechanism_says_how_to_fix_it(entry):
    m = mechanisms.get(entry.name, dim=32, heads=4)
    x = torch.randn(2, 4, 4, 32, dtype=torch.float64) if "[B, H, W, C]" in entry.layout else torch.randn(2, 16, 32, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"is torch.float64 but the module's parameters are torch.float32: call module.to\(torch.float64\)"):
        m(x)


@pytest.mark.parametrize("name", ["mha", "hilo", "neighborhood"])
def test_float64_mechanism_runs_in_float64(name):
    m = mechanisms.get(name, dim=32, heads=4).double()
    x = torch.randn(2, 8, 8, 32, dtype=torch.float64) if name != "mha" else torch.randn(2, 16, 32, dtype=torch.float64)
    assert m(x).dtype == torch.float64
