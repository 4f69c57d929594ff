"""Column-mass probe: equals the column sums of the reference's full matrix."""

import torch
from hypothesis import given

from attnlab.core import attend
from attnlab.core import rows as R
from attnlab.core.attend import _check
from attnlab.core.backends import reference_probs
from attnlab.probes import ColumnMass
from tests.core.strategies import cases


@given(c=cases(max_len=200))
def test_column_mass_equals_full_matrix_column_sums(c):
    old = R.CHUNK_BYTES
    R.CHUNK_BYTES = 4 * 19 * c.q.shape[0] * c.q.shape[1] * c.k.shape[2]
    try:
        probe = ColumnMass()
        attend(c.q, c.k, c.v, probes=[probe], **c.kwargs())
    finally:
        R.CHUNK_BYTES = old
    got = probe.result()["attend"]
    x = _check(c.q, c.k, c.v, c.mask, c.bias, c.is_causal, None)
    p = reference_probs(x).double()
    torch.testing.assert_close(got["mass"], p.sum(2), atol=1e-6, rtol=1e-6)


def test_sink_column_is_found():
    # Every query puts almost all its mass on key 0: column 0 gets ~T.
    T = 10
    q = torch.zeros(1, 1, T, 2)
    q[..., 0] = 50.0
    k = torch.zeros(1, 1, T, 2)
    k[:, :, 0, 0] = 1.0
    probe = ColumnMass()
    attend(q, k, torch.randn(1, 1, T, 2), is_causal=True, probes=[probe])
    mass = probe.result()["attend"]["mass"][0, 0]
    assert abs(mass[0].item() - T) < 1e-6
    assert mass[1:].abs().max().item() < 1e-6
    assert probe.result()["attend"]["queries"][0, 0].tolist() == list(range(T, 0, -1))
