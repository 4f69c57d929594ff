"""Visual search (paper 40): top-down map = conv(search features, target features); winner-take-all with inhibition of return."""

import pytest
import torch

from attnlab import operators
from attnlab.operators.visual_search import search_display, topdown_map, winner_take_all

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_topdown_map_is_a_cross_correlation_per_image():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 6, 7), torch.randn(2, 3, 3, 1)
    m = topdown_map(s, t)
    padded = torch.nn.functional.pad(s, (0, 0, 1, 1))  # (2, 3, 8, 7)
    for b in range(2):
        for i in range(6):
            for j in range(7):
                torch.testing.assert_close(m[b, i, j], (padded[b, :, i : i + 3, j : j + 1] * t[b]).sum())


def test_topdown_map_gradcheck():
    s = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(topdown_map, (s, t))


def test_winner_take_all_visits_peaks_in_order_and_inhibits_around_misses():
    m = torch.zeros(6, 6)
    m[0, 0], m[0, 1], m[5, 5], m[3, 3] = 4.0, 3.5, 3.0, 2.0  # (0, 1) is inhibited by the miss at (0, 0)
    target = torch.zeros(6, 6, dtype=torch.bool)
    target[3, 3] = True
    assert winner_take_all(m, target, ior_radius=1.5).tolist() == [[0, 0], [5, 5], [3, 3]]
    assert winner_take_all(m, target, ior_radius=1.5, max_fixations=2).tolist() == [[0, 0], [5, 5]]
    assert winner_take_all(m, target, ior_radius=0.5).tolist() == [[0, 0], [0, 1], [5, 5], [3, 3]]


def _mean_fixations(kind, n_items, trials=100):
    g = torch.Generator().manual_seed(n_items)
    total = 0
    for _ in range(trials):
        s, t, mask = search_display(n_items, kind, generator=g)
        total += len(winner_take_all(topdown_map(s[None], t[None])[0], mask, ior_radius=2.5))
    return total / trials


@pytest.mark.slow
def test_popout_is_found_at_once_while_conjunction_search_grows_with_set_size():
    """PAPERS.md check: pop-out found in ~1 fixation at every set size; conjunction search grows with set size."""
    sizes = (4, 8, 16, 32)
    popout = [_mean_fixations("popout", n) for n in sizes]
    conjunction = [_mean_fixations("conjunction", n) for n in sizes]
    assert max(popout) <= 1.3, f"pop-out fixations by set size {dict(zip(sizes, popout))}"
    assert conjunction == sorted(conjunction), f"conjunction {dict(zip(sizes, conjunction))}"
    assert conjunction[-1] >= 2 * conjunction[0] and conjunction[-1] >= 2 * popout[-1], f"conjunction {dict(zip(sizes, conjunction))}"


def test_search_display_plants_one_target_and_its_features():
    s, t, mask = search_display(5, "conjunction", noise=0.0, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 18, 18) and t.shape == (4, 3, 3) and int(mask.sum()) == 9
    torch.testing.assert_close(s[:, mask].T, torch.tensor([[1.0, 0, 1, 0]]).expand(9, 4))
    assert int((s.abs().sum(0) > 0).sum()) == 5 * 9  # five items of 3x3 pixels


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same B and C"):
        topdown_map(torch.randn(1, 3, 5, 5), torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="odd height and width"):
        topdown_map(torch.randn(1, 3, 5, 5), torch.randn(1, 3, 2, 3))
    with pytest.raises(ValueError, match="target a bool mask of the same shape"):
        winner_take_all(torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="ior_radius must be > 0"):
        winner_take_all(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool), ior_radius=0)
    with pytest.raises(ValueError, match="kind must be 'popout' or 'conjunction'"):
        search_display(3, "feature")
    with pytest.raises(ValueError, match=r"n_items must be an integer in \[1, grid² = 36\]"):
        search_display(40, "popout")


def test_registered():
    assert operators.get("topdown_map") is topdown_map and operators.get("winner_take_all") is winner_take_all
    assert topdown_map.paper == winner_take_all.paper == "40"
