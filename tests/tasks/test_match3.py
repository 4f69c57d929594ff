"""Paper 50: Match3 labels, checked against a triple loop, with balanced classes."""

import itertools

import pytest
import torch

from attnlab import tasks
from attnlab.tasks.match3 import Match3, match3_labels


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _reference(x, mod):
    """y_i = 1 iff x_i + x_j + x_k ≡ 0 (mod M) for some j, k (any positions), by brute force."""
    n = len(x)
    return [any((x[i] + x[j] + x[k]) % mod == 0 for j, k in itertools.product(range(n), repeat=2)) for i in range(n)]


def test_match3_same_seed_same_batch_other_seed_other_batch():
    task = Match3()
    a, b, c = (task.batch(8, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_match3_hand_checked_instance():
    # mod 10, x = 3 4 5 7. Pair sums x_j + x_k mod 10: {6, 7, 8, 0, 9, 1, 2, 4}.
    # 3 needs 7 (3+4) yes; 4 needs 6 (3+3) yes; 5 needs 5: no; 7 needs 3: no.
    x = torch.tensor([[3, 4, 5, 7]])
    assert match3_labels(x, 10)[0].tolist() == [True, True, False, False] == _reference([3, 4, 5, 7], 10)
    # i itself may be reused: 0 + 0 + 0 ≡ 0, and 5 + 5 + 0 with j = k
    assert match3_labels(torch.tensor([[0, 9]]), 10)[0].tolist() == [True, False]
    assert match3_labels(torch.tensor([[5, 1, 0]]), 10)[0].tolist() == [True, False, True]


@pytest.mark.parametrize("mod", [7, 12, 30])
def test_match3_labels_match_the_triple_loop(mod):
    x = torch.randint(mod, (16, 7), generator=_g(mod))
    got = match3_labels(x, mod)
    for row in range(16):
        assert got[row].tolist() == _reference(x[row].tolist(), mod)


def test_match3_targets_and_balance():
    task = Match3(seq_len=12)
    b = task.batch(128, "train", _g(0))
    assert torch.equal(b.targets, torch.where(match3_labels(b.inputs, task.mod), task.yes, task.no))
    frac = b.extra["label"].float().mean(-1)
    assert ((frac - 0.5).abs() <= 0.125 + 1e-6).all()
    assert b.mask.all() and b.inputs.max() < task.mod
    unbalanced = Match3(seq_len=12, balance=None).batch(256, "train", _g(0)).extra["label"].float().mean()
    assert 0.4 < unbalanced < 0.6  # the default modulus alone balances the labels on average


def test_match3_metric_is_accuracy_over_all_positions():
    task = Match3(seq_len=8)
    b = task.batch(16, "train", _g(0))
    V = task.vocab_size
    logits = torch.nn.functional.one_hot(b.targets, V).float()
    assert task.metric(logits, b) == 1.0
    flipped = torch.where(b.extra["label"], task.no, task.yes)
    assert task.metric(torch.nn.functional.one_hot(flipped, V).float(), b) == 0.0


def test_match3_is_registered():
    assert tasks.get("match3").paper == "50"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seq_len": 1}, r"seq_len must be an integer >= 2"),
        ({"mod": 1}, r"mod must be an integer >= 2"),
        ({"balance": 0.0}, r"tolerance in \(0, 0.5\]"),
        ({"seq_len": 16, "mod": 3}, "use mod near 196"),
    ],
)
def test_match3_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        Match3(**options)
