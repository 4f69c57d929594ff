"""Entropy probe: equals the statistic computed from the reference's full matrix."""

import math

import torch
from hypothesis import given

from attnlab.core import Site, attend
from attnlab.core import rows as R
from attnlab.core.attend import _check
from attnlab.core.backends import reference_probs
from attnlab.probes import Entropy
from tests.core.strategies import cases


def _full_matrix_entropy(c):
    x = _check(c.q, c.k, c.v, c.mask, c.bias, c.is_causal, None)
    p = reference_probs(x).double()  # [B, H, Tq, Tk]
    visible = x.allowed()
    if visible is None:
        visible = torch.ones(p.shape, dtype=torch.bool)
    if x.bias is not None:
        visible = visible & ~torch.isneginf(x.bias)
    n = visible.expand(p.shape).sum(-1).double()  # [B, H, Tq]
    h = -torch.xlogy(p, p).sum(-1)
    rows, norm_rows = n >= 1, n >= 2
    ent = torch.where(rows, h, 0).sum((0, 2)) / rows.sum((0, 2)).clamp(min=1)
    hn = torch.where(norm_rows, h / torch.log(n.clamp(min=2)), 0).sum((0, 2)) / norm_rows.sum((0, 2)).clamp(min=1)
    nan = torch.tensor(float("nan"), dtype=ent.dtype)  # a head with no row to average is undefined, not 0
    return torch.where(rows.sum((0, 2)) > 0, ent, nan), torch.where(norm_rows.sum((0, 2)) > 0, hn, nan)


@given(c=cases(max_len=200))
def test_entropy_equals_full_matrix_statistic(c):
    old = R.CHUNK_BYTES
    R.CHUNK_BYTES = 4 * 23 * c.q.shape[0] * c.q.shape[1] * c.k.shape[2]  # several chunks
    try:
        probe = Entropy()
        attend(c.q, c.k, c.v, probes=[probe], **c.kwargs())
    finally:
        R.CHUNK_BYTES = old
    got = probe.result()["attend"]
    ent, hn = _full_matrix_entropy(c)
    torch.testing.assert_close(got["entropy"], ent, atol=1e-6, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(got["normalized"], hn, atol=1e-6, rtol=1e-6, equal_nan=True)


def test_entropy_of_known_patterns():
    # Head 0: logits equal -> uniform over the visible (causal) keys: normalised entropy 1.
    # Head 1: one key far above the others -> entropy ~0.
    T = 16
    q = torch.zeros(1, 2, T, 4)
    k = torch.zeros(1, 2, T, 4)
    q[:, 1, :, 0] = 100.0
    k[:, 1, 0, 0] = 1.0  # every query of head 1 looks at key 0
    probe = Entropy()
    attend(q, k, torch.randn(1, 2, T, 4), is_causal=True, probes=[probe], site=Site("layers.0.attn"))
    r = probe.result()["layers.0.attn"]
    want0 = sum(math.log(n) for n in range(1, T + 1)) / T
    assert abs(r["entropy"][0].item() - want0) < 1e-6
    assert abs(r["normalized"][0].item() - 1.0) < 1e-6
    assert r["entropy"][1].item() < 1e-6


def test_entropy_accumulates_per_site_and_filters_sites():
    q = k = v = torch.randn(1, 2, 8, 4)
    probe = Entropy(sites="layers.1*")
    for i in range(3):
        attend(q, k, v, probes=[probe], site=Site(f"layers.{i}.attn", layer=i))
    assert list(probe.result()) == ["layers.1.attn"]


def test_entropy_in_training_holds_no_autograd_graph():
    """Probes observe: a probe attached while training must not keep the step's graph alive."""
    q = torch.randn(1, 2, 12, 8, requires_grad=True)
    ent = Entropy()
    attend(q, q, q, is_causal=True, probes=[ent]).sum().backward()
    result = ent.result()["attend"]
    assert not result["entropy"].requires_grad and not result["normalized"].requires_grad


def test_entropy_when_the_first_key_gets_no_mass():
    # Every row but the first puts ~e^-100 on key 0 (p underflows to 0) and is uniform over the
    # rest: the row pass cannot anchor lse on the first key and must fall back to the row max.
    T = 24
    q = torch.zeros(1, 1, T, 4)
    k = torch.zeros(1, 1, T, 4)
    q[..., 0] = 100.0
    k[:, :, 0, 0] = -2.0  # s_0 = 100 * -2 / sqrt(4) = -100
    old = R.CHUNK_BYTES
    R.CHUNK_BYTES = 4 * 5 * T  # five rows per chunk
    try:
        probe = Entropy()
        attend(q, k, torch.randn(1, 1, T, 4), is_causal=True, probes=[probe])
    finally:
        R.CHUNK_BYTES = old
    want = sum(math.log(i) for i in range(1, T)) / T  # row i > 0: uniform over keys 1..i
    assert abs(probe.result()["attend"]["entropy"][0].item() - want) < 1e-5
