"""Per-layer linear probes: a planted separable feature is found, random labels are not."""

import pytest
import torch

from attnlab.represent import probe_layers


def test_a_planted_separable_feature_is_decoded_and_random_labels_are_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    labels = torch.randint(0, 2, (400,), generator=g)
    x[:, 3] += 3 * (2 * labels - 1)  # separable along one direction with a margin, the other 15 units noise
    planted = labels.tolist()
    random_labels = torch.randint(0, 2, (400,), generator=g).tolist()
    hit = probe_layers([x], planted)[0]
    assert hit["accuracy"] >= 0.99
    assert hit["control"] == pytest.approx(0.5, abs=0.1)  # shuffled labels: the probe cannot memorise them
    assert hit["selectivity"] > 0.4
    miss = probe_layers([x], random_labels, control=False)[0]
    assert miss["accuracy"] == pytest.approx(0.5, abs=0.1)


def test_one_layer_holding_the_feature_beats_the_others():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (300,), generator=g)
    noise = torch.randn(300, 8, generator=g)
    holds = noise.clone()
    holds[:, 0] += 4 * labels  # three classes, one direction
    rows = probe_layers([noise, holds], labels.tolist(), control=False)
    assert rows[1]["accuracy"] > 0.95 > 0.5 > rows[0]["accuracy"]


def test_one_class_or_too_few_examples_are_refused():
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="one class"):
        probe_layers([x], [1] * 20)
    with pytest.raises(ValueError, match="fewer than the 5 folds"):
        probe_layers([x], [0] * 17 + [1] * 3)
    with pytest.raises(ValueError, match="one row per example"):
        probe_layers([x[:10]], [0, 1] * 10)
