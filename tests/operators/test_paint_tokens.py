"""paint_tokens (paper 4, PAINT): the two image-token sets from the vision encoder's CLS attention, against a numpy reference."""

import numpy as np
import pytest
import torch

from attnlab.core.spans import Span
from attnlab.operators import get
from attnlab.operators.paint_tokens import outlier_ratio, paint_tokens

P = 16
IMAGE = Span(range(5, 5 + P), name="image", length=30)


def _maps(first: np.ndarray, feature: np.ndarray, layers: int = 3) -> list[torch.Tensor]:
    """Encoder maps [1, 2, 1 + P, 1 + P] whose CLS rows, summed over the 2 heads, are ``first`` (layer 0) and ``feature`` (layer −2)."""
    maps = []
    for layer in range(layers):
        a = torch.full((1, 2, 1 + P, 1 + P), 1.0 / (1 + P), dtype=torch.float64)
        row = first if layer == 0 else feature if layer == layers - 2 else np.ones(P)
        a[0, :, 0, 1:] = torch.from_numpy(row) / 2  # each head holds half
        maps.append(a)
    return maps


def _reference(first, feature, top_fraction=0.25):
    q1, q3 = np.percentile(feature, [25, 75])
    n = int((feature > q3 + 1.5 * (q3 - q1)).sum())
    second = set(np.argsort(-feature, kind="stable")[:n].tolist())
    top = set(np.argsort(-first, kind="stable")[: int(P * top_fraction)].tolist()) - second
    return {5 + i for i in top}, {5 + i for i in second}


def test_sets_match_the_authors_rule_with_planted_outliers():
    rng = np.random.default_rng(1)
    first = rng.random(P)
    feature = rng.random(P) * 0.1
    feature[[2, 9, 11]] = [5.0, 4.0, 3.0]  # three outliers of the feature layer
    first[[9, 3]] = [10.0, 9.0]  # one of them is also among the first layer's top
    top, second = paint_tokens(_maps(first, feature), IMAGE)
    want_top, want_second = _reference(first, feature)
    assert set(second) == want_second == {7, 14, 16}
    assert set(top) == want_top and 14 not in set(top) and len(top) == 3  # ⌊0.25 · 16⌋ = 4 minus the shared one
    assert top.length == second.length == 30


def test_outlier_ratio_is_tukeys_upper_fence():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0])
    q1, q3 = np.percentile(x.numpy(), [25, 75])
    assert outlier_ratio(x) == float((x.numpy() > q3 + 1.5 * (q3 - q1)).mean()) == 0.125


def test_registered_as_an_operator_of_paper_4():
    assert get("paint_tokens") is paint_tokens


def test_bad_input_is_refused():
    maps = _maps(np.ones(P), np.ones(P))
    with pytest.raises(ValueError, match="top_layer=5 is out of range: the vision encoder has 3 layers"):
        paint_tokens(maps, IMAGE, top_layer=5)
    with pytest.raises(ValueError, match="fewer than CLS \\+ the 20 image tokens"):
        paint_tokens(maps, Span(range(20), name="image", length=30))
    with pytest.raises(ValueError, match=r"top_fraction must be a share of the patches in \[0, 1\]"):
        paint_tokens(maps, IMAGE, top_fraction=25)
    with pytest.raises(ValueError, match="no vision attention maps"):
        paint_tokens([], IMAGE)
