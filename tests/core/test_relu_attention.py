"""Paper 68's ReLU attention through ``attend(normalizer="relu")``: reference backend, row pass, probes."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from attnlab import attach
from attnlab.core import Probe, attend, choose_backend, rows
from attnlab.core import masks as M
from attnlab.core.attend import _check
from attnlab.mechanisms.mha import MultiHeadAttention
from attnlab.probes import Entropy
from tests.core.strategies import cases


def _relu_weights(c) -> torch.Tensor:
    """``ReLU(q·k/√D + bias) / n`` written out: ``n`` counts the keys each query may see."""
    q, k = c.q.double(), c.k.double()
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    k = k.repeat_interleave(H // k.shape[1], dim=1)
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(D) if D else torch.zeros(B, H, Tq, Tk, dtype=torch.float64)
    seen = torch.ones(B, H, Tq, Tk, dtype=torch.bool)
    for extra in (c.mask, c.bias):
        if isinstance(extra, M.Mask):
            seen = seen & extra.dense(Tq, Tk, batch=B, heads=H)
        elif isinstance(extra, torch.Tensor) and extra.dtype == torch.bool:
            seen = seen & extra
        elif isinstance(extra, torch.Tensor):
            s = s + extra.double()
            seen = seen & ~torch.isneginf(extra)
    if c.is_causal:
        seen = seen & torch.ones(Tq, Tk, dtype=torch.bool).tril()
    w = torch.where(seen, torch.relu(s), 0.0)  # [B, H, Tq, Tk]
    return w / seen.sum(-1, keepdim=True).clamp(min=1)


def _relu_reference(c) -> torch.Tensor:
    v = c.v.double().repeat_interleave(c.q.shape[1] // c.v.shape[1], dim=1)
    return (_relu_weights(c) @ v).to(c.q.dtype)  # [B, H, Tq, Dv]


class Weights(Probe):
    """Collects the chunks' weights into one ``[B, H, Tq, Tk]`` matrix (test only)."""

    def __init__(self, shape):
        self.w = torch.full(shape, float("nan"), dtype=torch.float64)
        self.normalizers = set()

    def observe(self, chunk, site):
        self.normalizers.add(chunk.normalizer)
        self.w[:, :, chunk.q_idx] = 0.0
        self.w[:, :, chunk.q_idx, chunk.kv_start : chunk.kv_start + chunk.probs.shape[-1]] = chunk.probs.double()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_len=80))
def test_relu_attention_equals_written_out_formula(c):
    out = attend(c.q, c.k, c.v, **c.kwargs(), normalizer="relu")
    torch.testing.assert_close(out, _relu_reference(c), atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_len=80))
def test_row_pass_relu_equals_reference_and_probes_see_the_relu_weights(c):
    probe = Weights((*c.q.shape[:3], c.k.shape[2]))
    out = attend(c.q, c.k, c.v, **c.kwargs(), normalizer="relu", probes=[probe])
    torch.testing.assert_close(out, _relu_reference(c), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probe.w.double(), _relu_weights(c), atol=1e-5, rtol=1e-5)
    assert probe.normalizers <= {"relu"}


def test_row_pass_relu_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr(rows, "CHUNK_BYTES", 4 * 2 * 3 * 200 * 7)  # 7 rows per chunk
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 200, 8, generator=g) for _ in range(3))
    for mask in (M.sliding_window(40), M.causal, None):
        c = type("C", (), {"q": q, "k": k, "v": v, "mask": mask, "bias": None, "is_causal": mask is None})
        probe = Weights((1, 3, 200, 200))
        out = attend(q, k, v, mask=mask, is_causal=c.is_causal, normalizer="relu", probes=[probe])
        torch.testing.assert_close(out, _relu_reference(c), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(probe.w.double(), _relu_weights(c), atol=1e-6, rtol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_len=24, grad=True, dtypes=(torch.float64,)))
def test_relu_attention_gradients_match_the_formula(c):
    leaves = [t for t in (c.q, c.k, c.v, c.bias) if t is not None and t.requires_grad]
    for probes in ((), (Weights((*c.q.shape[:3], c.k.shape[2])),)):  # reference backend, then the row pass
        got = torch.autograd.grad(attend(c.q, c.k, c.v, **c.kwargs(), normalizer="relu", probes=probes).square().sum(), leaves)
        want = torch.autograd.grad(_relu_reference(c).square().sum(), leaves)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-6)


def test_relu_rows_need_not_sum_to_one_and_a_dormant_query_outputs_zero():
    q = torch.tensor([[[[1.0, 0.0], [-1.0, 0.0]]]])  # [1, 1, 2, 2]: query 1 scores every key negatively
    k = v = torch.tensor([[[[2.0, 0.0], [3.0, 0.0]]]])
    probe = Weights((1, 1, 2, 2))
    out = attend(q, k, v, normalizer="relu", probes=[probe])
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(probe.w[0, 0], torch.tensor([[2 * s / 2, 3 * s / 2], [0.0, 0.0]], dtype=torch.float64))
    assert probe.w[0, 0, 0].sum() > 1 and torch.equal(out[0, 0, 1], torch.zeros(2))


def test_entropy_of_relu_rows_is_that_of_the_normalised_row():
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]]])  # two equal keys and one below zero: entropy log 2
    ent = Entropy()
    with attach(probes=[ent]):
        attend(q, k, k, normalizer="relu")
    torch.testing.assert_close(ent.result()["attend"]["entropy"].double(), torch.tensor([math.log(2)], dtype=torch.float64))


def test_auto_chooses_reference_for_relu_and_forcing_a_softmax_backend_raises():
    q = k = v = torch.randn(1, 2, 5, 8)
    assert choose_backend(_check(q, k, v, None, None, True, None, "relu")).name == "reference"
    for backend in ("sdpa", "blocked", "flex"):
        with pytest.raises(
            ValueError, match=f"backend='{backend}' computes softmax only, not normalizer='relu': use 'reference' or 'auto'"
        ):
            attend(q, k, v, normalizer="relu", backend=backend)
    with pytest.raises(ValueError, match=r"normalizer must be one of \('softmax', 'relu'\), got normalizer='sigmoid'"):
        attend(q, k, v, normalizer="sigmoid")


def test_mha_relu_attention_goes_through_its_site():
    m = MultiHeadAttention(16, 4, is_causal=True, attention="relu")
    probe = Weights((1, 4, 7, 7))
    with attach(probes=[probe]):
        out = m(torch.randn(1, 7, 16))
    assert probe.normalizers == {"relu"} and not torch.isnan(probe.w).any()
    assert torch.triu(probe.w[0], 1).abs().max() == 0  # causal
    assert out.shape == (1, 7, 16)
    with pytest.raises(ValueError, match="attention='relu' needs backend='auto' or 'reference', got backend='sdpa'"):
        MultiHeadAttention(16, 4, attention="relu", backend="sdpa")


def test_mha_sigma_reparam_goes_through_its_site():
    m = MultiHeadAttention(16, 4, is_causal=True, sigma_reparam=True)
    ent = Entropy()
    with attach(probes=[ent]):
        m(torch.randn(1, 7, 16))
    assert list(ent.result()) == ["mha"]
