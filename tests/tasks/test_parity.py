"""Paper 13: sparse parity over a fixed subset, answered at the last position."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.parity import Parity


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_parity_same_seed_same_batch_other_seed_other_batch():
    task = Parity()
    a, b, c = (task.batch(8, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_parity_hand_checked_labels():
    task = Parity(bits=6, k=3, subset=(0, 2, 5))
    b = task.batch(64, "train", _g(0))
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        assert x[-1] == 2 and set(x[:-1]) <= {0, 1}
        ones = x[0] + x[2] + x[5]
        assert y[-1] == (1 if ones in (1, 3) else 0) and y[:-1] == [IGNORE] * 6


def test_parity_subset_is_fixed_by_its_seed_and_only_it_matters():
    a, b, c = Parity(subset_seed=0), Parity(subset_seed=0), Parity(subset_seed=1)
    assert torch.equal(a.subset, b.subset) and not torch.equal(a.subset, c.subset)
    batch = a.batch(256, "train", _g(0))
    flipped = batch.inputs.clone()
    outside = [i for i in range(16) if i not in a.subset.tolist()]
    flipped[:, outside] ^= 1  # bits outside S do not change the label
    assert torch.equal(flipped[:, a.subset].sum(-1) % 2, batch.targets[:, -1])
    assert 0.4 < batch.extra["parity"].float().mean() < 0.6


def test_parity_metric_counts_only_the_answer():
    task = Parity(bits=8, k=2)
    b = task.batch(16, "train", _g(0))
    logits = torch.nn.functional.one_hot(1 - b.inputs.clamp(max=1), 3).float()  # wrong bits everywhere ...
    logits[:, -1] = torch.nn.functional.one_hot(b.extra["parity"], 3).float()  # ... right answer
    assert task.metric(logits, b) == 1.0
    logits[:, -1] = torch.nn.functional.one_hot(1 - b.extra["parity"], 3).float()
    assert task.metric(logits, b) == 0.0


def test_parity_is_registered():
    task = tasks.get("parity", bits=10, k=4)
    assert task.paper == "13" and task.seq_len == 11 and len(task.subset) == 4


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bits": 4, "k": 5}, r"k must be an integer in \[1, 4\]"),
        ({"bits": 0}, r"bits must be an integer >= 1"),
        ({"bits": 4, "k": 2, "subset": (1, 1)}, r"distinct positions in \[0, 4\)"),
        ({"bits": 4, "k": 2, "subset": (1, 4)}, r"distinct positions in \[0, 4\)"),
    ],
)
def test_parity_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        Parity(**options)
