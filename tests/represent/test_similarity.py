"""Linear CKA and unit correlation, batch and streamed, against the kernel (HSIC) formula and numpy."""

import numpy as np
import pytest
import torch

from attnlab.represent import CrossStats, linear_cka
from attnlab.represent.similarity import pair_groups


def _reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA in sample space: HSIC of centred linear Gram matrices (Kornblith et al. 2019, eq. 3), independent of the feature-space formula."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum()))


def _data(seed=0, n=120, cx=7, cy=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cx, generator=g, dtype=torch.float64) * 3 + 50  # a large mean: centring must lose nothing
    y = torch.tanh(x[:, :cy] @ torch.randn(cy, cy, generator=g, dtype=torch.float64) / 10) + 0.3 * torch.randn(
        n, cy, generator=g, dtype=torch.float64
    )
    return x, y


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = _data()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = _data()
    q, _ = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(4.5 * x, 0.1 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, x @ q * 3) == pytest.approx(1.0, abs=1e-10)


def test_batch_cka_matches_the_kernel_formula():
    x, y = _data()
    assert linear_cka(x, y) == pytest.approx(_reference_cka(x, y), abs=1e-10)


def test_streamed_cka_equals_the_batch_formula():
    x, y = _data(seed=1, n=301)
    s = CrossStats([(0, 1)])
    for lo, hi in [(0, 17), (17, 100), (100, 101), (101, 301)]:  # uneven batches, one of a single row
        s.update([x[lo:hi], y[lo:hi]])
    assert s.n == 301
    assert s.cka(0, 1) == pytest.approx(_reference_cka(x, y), abs=1e-6)
    assert s.cka(1, 0) == pytest.approx(s.cka(0, 1), abs=1e-15)
    assert s.cka(0, 0) == pytest.approx(1.0, abs=1e-12)


def test_streamed_float32_rows_agree_with_float64():
    x, y = _data(seed=2, n=400)
    s = CrossStats([(0, 1)])
    for lo in range(0, 400, 64):
        s.update([x[lo : lo + 64].float(), y[lo : lo + 64].float()])
    assert s.cka(0, 1) == pytest.approx(_reference_cka(x.float().double(), y.float().double()), abs=1e-5)


def test_streamed_correlation_equals_numpy():
    x, y = _data(seed=3)
    s = CrossStats([(0, 1)])
    s.update([x[:50], y[:50]])
    s.update([x[50:], y[50:]])
    want = np.corrcoef(x.numpy().T, y.numpy().T)[:7, 7:]
    np.testing.assert_allclose(s.correlation(0, 1).numpy(), want, atol=1e-10)


def test_streams_that_change_shape_or_pairs_not_kept_are_refused():
    x, y = _data()
    s = CrossStats([(0, 1)])
    with pytest.raises(ValueError, match="no rows were added"):
        s.cka(0, 1)
    s.update([x, y])
    with pytest.raises(ValueError, match="streams changed between batches"):
        s.update([x, x])
    with pytest.raises(ValueError, match="same rows"):
        s.update([x, y[:3]])
    with pytest.raises(ValueError, match="was not kept"):
        s.cka(0, 2)


def test_float32_sums_agree_with_float64_sums():
    x, y = _data(seed=4, n=512)
    wide, narrow = CrossStats([(0, 1)]), CrossStats([(0, 1)], dtype=torch.float32)
    for lo in range(0, 512, 32):
        wide.update([x[lo : lo + 32], y[lo : lo + 32]])
        narrow.update([x[lo : lo + 32].float(), y[lo : lo + 32].float()])
    assert narrow.cross[(0, 1)].dtype == torch.float32
    assert narrow.cka(0, 1) == pytest.approx(wide.cka(0, 1), abs=1e-5)
    assert narrow.cka(0, 1) != wide.cka(0, 1)  # the sums really ran in float32
    with pytest.raises(ValueError, match="float32 or float64"):
        CrossStats([(0, 1)], dtype=torch.float16)


def test_pair_groups_fit_the_budget_and_cover_every_pair_once():
    widths = [3, 5, 4, 6]
    pairs = [(i, j) for i in range(4) for j in range(i, 4)]
    budget = 100 * 8  # every pair fits alone; all 10 take 205 * 8 bytes
    groups = pair_groups(pairs, widths, budget)
    assert [p for g in groups for p in g] == pairs
    assert len(groups) > 1
    for g in groups:
        closed = {(min(a, b), max(a, b)) for a, b in g} | {(a, a) for p in g for a in p}
        assert sum(widths[a] * widths[b] for a, b in closed) * 8 <= budget
    assert pair_groups(pairs, widths, 10**9) == [pairs]
    with pytest.raises(ValueError, match="more than the"):
        pair_groups([(3, 3)], widths, 35 * 8)
