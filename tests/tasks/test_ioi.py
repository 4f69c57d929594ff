"""Paper 5: synthetic IOI sentences, their indirect objects and the held-out name pairs."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.ioi import IOI, NAMES


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return IOI()


def _words(task, row):
    return [task.itos[int(t)] for t in row if int(t) != 0]


@pytest.mark.parametrize("split", ["train", "test"])
def test_ioi_same_seed_same_batch_other_seed_other_batch(task, split):
    a, b, c = (task.batch(8, split, _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_ioi_target_is_the_name_not_repeated(task):
    b = task.batch(128, "train", _g(0))
    for r in range(128):
        words = _words(task, b.inputs[r])
        names = [w for w in words if w in NAMES]
        assert words[0] == "<s>" and words[-1] == "to" and len(names) == 3
        io = next(n for n in names if names.count(n) == 1)  # by hand: the name said once
        s = next(n for n in names if names.count(n) == 2)
        end = len(words) - 1
        assert int(b.extra["end_pos"][r]) == end and task.itos[int(b.targets[r, end])] == io
        assert (b.targets[r] != IGNORE).sum() == 1
        e = {k: int(v[r]) for k, v in b.extra.items()}
        assert words[e["io_pos"]] == io and words[e["s1_pos"]] == s and words[e["s2_pos"]] == s
        assert e["s1_pos"] < e["s2_pos"] and e["io_pos"] < e["s2_pos"]
        assert bool(b.extra["abba"][r]) == (e["io_pos"] < e["s1_pos"])  # ABBA: IO first
    assert 0.3 < b.extra["abba"].float().mean() < 0.7


def test_ioi_test_name_pairs_are_disjoint_from_train(task):
    def pairs(split):
        b = task.batch(512, split, _g(0))
        return {frozenset((int(i), int(s))) for i, s in zip(b.extra["io"], b.extra["s"])}

    train, test = pairs("train"), pairs("test")
    assert train.isdisjoint(test) and len(test) > 10
    assert len(task.pairs["test"]) == round(0.2 * 190)


def test_ioi_metric_and_logit_difference_read_the_end_position(task):
    b = task.batch(16, "train", _g(0))
    V = task.vocab_size
    logits = torch.zeros(16, task.seq_len, V)
    rows = torch.arange(16)
    logits[rows, :, b.extra["s"]] = 5.0  # the subject everywhere ...
    assert task.metric(logits, b) == 0.0
    assert task.logit_difference(logits, b) == -5.0
    logits[rows, b.extra["end_pos"], b.extra["io"]] = 7.0  # ... but IO wins at the end
    assert task.metric(logits, b) == 1.0
    assert task.logit_difference(logits, b) == pytest.approx(2.0)
    logits[rows, b.extra["end_pos"] - 1, b.extra["io"]] = 100.0  # other positions do not count
    assert task.logit_difference(logits, b) == pytest.approx(2.0)


def test_ioi_is_registered():
    task = tasks.get("ioi", names=6)
    assert task.paper == "5" and len(task.pairs["train"]) + len(task.pairs["test"]) == 15


@pytest.mark.parametrize(
    ("options", "match"),
    [({"names": 2}, r"names must be an integer in \[3, 20\]"), ({"held_out": 0.0}, r"fraction in \(0, 1\)")],
)
def test_ioi_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        IOI(**options)
