"""Head-pattern probe: TransformerLens' detector scores, attention distance and NMI."""

import math

import torch

from attnlab.core import Site, attend
from attnlab.probes import Patterns
from tests.probes.helpers import eager_and_instrumented, run


def _detection_patterns(tokens):
    """TransformerLens' detection patterns, written with loops."""
    T = len(tokens)
    prev = torch.zeros(T, T, dtype=torch.float64)
    dup = torch.zeros(T, T, dtype=torch.float64)
    ind = torch.zeros(T, T, dtype=torch.float64)
    for i in range(T):
        if i >= 1:
            prev[i, i - 1] = 1
        for j in range(T):
            if j < i and tokens[j] == tokens[i]:
                dup[i, j] = 1
            if 1 <= j <= i and tokens[j - 1] == tokens[i]:
                ind[i, j] = 1
    return {"previous_token": prev, "duplicate_token": dup, "induction": ind}


def test_detector_scores_equal_full_matrix_computation():
    rand = torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(3))
    ids = torch.cat([rand, rand], dim=1)
    attentions, _, model = eager_and_instrumented(ids)
    probe = Patterns()
    run(model, ids, [probe])
    pats = _detection_patterns(ids[0].tolist())
    T = ids.shape[1]
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs().double()
    for layer, A in enumerate(attentions):
        A = A[0]
        got = probe.result()[f"layers.{layer}.attn"]
        for name, D in pats.items():
            want = (A * D).sum((1, 2)) / A.sum((1, 2))
            torch.testing.assert_close(got[name], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["distance"], (A * dist).sum((1, 2)) / T, atol=1e-5, rtol=1e-5)
        pk = A.mean(1)  # p(k) with uniform queries
        h_k = -(pk * pk.clamp_min(1e-300).log()).sum(-1)
        mean_row_h = -(A * A.clamp_min(1e-300).log()).sum(-1).mean(-1)
        torch.testing.assert_close(got["nmi"], (h_k - mean_row_h) / torch.sqrt(math.log(T) * h_k), atol=1e-5, rtol=1e-5)


def _probe_on_bias(bias, tokens):
    T = bias.shape[-1]
    probe = Patterns()
    probe.begin(torch.tensor([tokens]), [])
    q = k = torch.zeros(1, bias.shape[0], T, 2)
    attend(q, k, torch.randn(1, bias.shape[0], T, 2), bias=bias[None], is_causal=True, probes=[probe], site=Site("s", layer=0))
    probe.end()
    return probe.result()["s"]


def test_constructed_heads_score_one_on_their_own_pattern():
    n = 8
    tokens = list(range(n)) * 2
    T = 2 * n
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    prev = torch.where((j == i - 1) | ((i == 0) & (j == 0)), 0.0, -60.0)  # all mass on the previous token
    ind = torch.where(((j == i - n + 1) & (i >= n)) | ((i < n) & (j == i)), 0.0, -60.0)  # token after the earlier copy
    r = _probe_on_bias(torch.stack([prev, ind]), tokens)
    assert r["previous_token"][0] > (T - 1) / T - 1e-6  # every row but the first
    assert r["induction"][1] > n / T - 1e-6 and r["induction"][0] < 1e-6
    assert r["previous_token"][1] < 1e-6


def test_nmi_orders_local_hybrid_global():
    T = 64
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    local = torch.where((i - j).abs() <= 1, 0.0, -60.0)
    global_ = torch.where(j < 4, 0.0, -60.0).expand(T, T)  # every query looks at the same first keys
    hybrid = torch.logaddexp(local, global_)  # half local, half global
    probe = Patterns()
    probe.begin(torch.zeros(1, T, dtype=torch.long), [])
    q = k = torch.zeros(1, 3, T, 2)
    attend(q, k, torch.randn(1, 3, T, 2), bias=torch.stack([local, hybrid, global_])[None], probes=[probe], site=Site("s", layer=0))
    probe.end()
    r = probe.result()["s"]
    assert r["nmi"][0] > r["nmi"][1] > r["nmi"][2]
    assert r["nmi"][2] < 1e-6
    assert r["kind"] == ["local", "hybrid", "global"]
