"""Paper 33: the needle's value is asked for by its key at the end, one token at a time."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.needle import Needle


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_needle_same_seed_same_batch_other_seed_other_batch():
    task = Needle()
    a, b, c = (task.batch(4, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_needle_targets_are_the_value_after_the_only_other_copy_of_the_key():
    task = Needle(seq_len=32, vocab_size=40, keys=8, value_len=3)
    b = task.batch(64, "train", _g(0))
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        key = x[-3]
        assert key < 8 and [t for t, tok in enumerate(x) if tok < 8] == [x.index(key), 29]  # key twice, no other key
        p = x.index(key)
        value = x[p + 1 : p + 4]
        assert p + 3 < 29 and all(v >= 8 for v in value)
        assert y[:29] == [IGNORE] * 29 and y[29:] == value  # v1 at the query key, then v2, v3
        assert x[30:] == value[:2]  # the tail feeds back the generated prefix


def test_needle_extra_points_at_the_needle():
    task = Needle(seq_len=64)
    b = task.batch(8, "train", _g(0))
    rows = torch.arange(8)
    assert torch.equal(b.inputs[rows, b.extra["needle_pos"]], b.inputs[rows, b.extra["query_pos"]])
    assert torch.equal(b.inputs.gather(1, b.extra["value_pos"]), b.extra["value"])
    assert torch.equal(b.targets[:, -4:], b.extra["value"])


@pytest.mark.parametrize(("depth", "pos"), [(0.0, 0), (1.0, 64 - 9), (0.5, 28)])
def test_needle_depth_places_the_needle(depth, pos):
    b = Needle(seq_len=64, depth=depth).batch(4, "train", _g(0))
    assert (b.extra["needle_pos"] == pos).all()


def test_needle_metric_counts_only_the_value_positions():
    task = Needle(seq_len=64)
    b = task.batch(8, "train", _g(0))
    assert torch.equal(b.mask, b.targets != IGNORE) and b.mask.sum() == 8 * 4
    V = task.vocab_size
    logits = torch.nn.functional.one_hot(b.inputs, V).float()  # predict the current token: wrong at the tail
    assert task.metric(logits, b) == 0.0
    logits[b.mask] = torch.nn.functional.one_hot(b.targets[b.mask], V).float()
    assert task.metric(logits, b) == 1.0


def test_needle_is_registered():
    assert tasks.get("needle", seq_len=16).paper == "33"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seq_len": 8}, r"seq_len must be an integer >= 10"),
        ({"vocab_size": 65}, r"vocab_size must be an integer >= 66"),
        ({"depth": 1.5}, r"fraction in \[0, 1\]"),
        ({"value_len": 0}, r"value_len must be an integer >= 1"),
    ],
)
def test_needle_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        Needle(**options)
