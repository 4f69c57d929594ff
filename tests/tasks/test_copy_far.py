"""Paper 11: the marked token of an early group is the target at the end of the last group."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.copy_far import CopyFar


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_copy_far_same_seed_same_batch_other_seed_other_batch():
    task = CopyFar()
    a, b, c = (task.batch(4, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("source_group", [0, 2])
def test_copy_far_target_is_the_token_after_the_marker(source_group):
    task = CopyFar(seq_len=32, groups=4, vocab_size=10, source_group=source_group)
    b = task.batch(64, "train", _g(0))
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        marks = [t for t, tok in enumerate(x) if tok == 8]
        assert len(marks) == 1 and marks[0] // 8 == source_group and marks[0] % 8 < 7  # payload in the same group
        assert x[-1] == 9 and x.count(9) == 1
        assert y[:-1] == [IGNORE] * 31 and y[-1] == x[marks[0] + 1] < 8


def test_copy_far_default_is_fits_check():
    task = tasks.get("copy_far")
    assert (task.seq_len, task.groups, task.group_size, task.paper) == (512, 8, 64, "11")
    b = task.batch(16, "train", _g(0))
    assert (b.extra["mark_pos"] < 64).all() and (b.mask.nonzero()[:, 1] == 511).all()


def test_copy_far_metric_counts_only_the_query():
    task = CopyFar(seq_len=32, groups=4, vocab_size=10)
    b = task.batch(8, "train", _g(0))
    logits = torch.zeros(8, 32, 10)
    logits[:, -1] = torch.nn.functional.one_hot(b.extra["payload"], 10).float()
    assert task.metric(logits, b) == 1.0
    logits[:, -1] = torch.nn.functional.one_hot((b.extra["payload"] + 1) % 8, 10).float()
    assert task.metric(logits, b) == 0.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seq_len": 500}, "multiple of groups"),
        ({"source_group": 7}, r"source_group must be an integer in \[0, 6\]"),
        ({"groups": 1}, r"groups must be an integer >= 2"),
        ({"vocab_size": 3}, r"vocab_size must be an integer >= 4"),
    ],
)
def test_copy_far_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        CopyFar(**options)
