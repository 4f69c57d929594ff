"""Sink probe: Gu et al.'s α_k and ACT's hidden sinks, against full eager attention matrices."""

import torch

from attnlab.core import Site, attend
from attnlab.probes import Sink
from tests.probes.helpers import eager_and_instrumented, run


def test_sink_statistics_equal_full_matrix_computation():
    ids = torch.randint(0, 100, (1, 23), generator=torch.Generator().manual_seed(0))
    attentions, _, model = eager_and_instrumented(ids)
    probe = Sink(tau=0.05)
    run(model, ids, [probe])
    r = probe.result()
    T = ids.shape[1]
    for layer, A in enumerate(attentions):
        A = A[0]  # [H, T, T]
        alpha = A.sum(1) / torch.arange(T, 0, -1, dtype=torch.float64)  # Σ_{q≥k} A[q, k] / (T − k)
        got = r[f"layers.{layer}.attn"]
        torch.testing.assert_close(got["alpha0"], alpha[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["first_mass"], A[:, :, 0].mean(1), atol=1e-5, rtol=1e-5)
        want = {(h, j) for h, j in torch.nonzero(alpha[:, 1:] > 0.05).tolist()}
        found = {(s["head"], s["position"] - 1) for s in probe.hidden if s["site"] == f"layers.{layer}.attn"}
        assert found == want


def test_constructed_sink_and_hidden_sink_are_found():
    # Head 0 sends every query to key 0; head 1 sends every query that can see it to key 3.
    T = 12
    q = torch.zeros(1, 2, T, 2)
    k = torch.zeros(1, 2, T, 2)
    q[:, :, :, 0] = 60.0
    k[:, 0, 0, 0] = 1.0
    k[:, 1, 3, 0] = 1.0
    probe = Sink()
    probe.begin(torch.arange(T)[None], [f"t{i}" for i in range(T)])
    attend(q, k, torch.randn(1, 2, T, 2), is_causal=True, probes=[probe], site=Site("layers.0.attn", layer=0))
    probe.end()
    r = probe.result()["layers.0.attn"]
    assert r["alpha0"][0] > 0.999 and bool(r["sink_head"][0])
    assert r["alpha0"][1] < 0.5  # only queries 0-2 attend to key 0 in head 1
    assert {(s["head"], s["position"], s["token"]) for s in probe.hidden} >= {(1, 3, "t3")}
    assert all(s["position"] >= 1 for s in probe.hidden)
