"""Paper 3: Scan-and-Snap sequences: distinct tokens name the class, common tokens do not."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.scan_snap import ScanSnap


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_scan_snap_same_seed_same_batch_other_seed_other_batch():
    task = ScanSnap()
    a, b, c = (task.batch(4, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_scan_snap_tiny_instance_by_hand():
    # 3 classes, 2 queries, 2 distinct tokens each, 2 common: distinct 0-5, common 6-7, queries 8-9, next 10-12
    task = ScanSnap(next_tokens=3, queries=2, distinct=2, common=2, seq_len=6)
    assert (task.common_start, task.query_start, task.next_start, task.vocab_size) == (6, 8, 10, 13)
    b = task.batch(64, "train", _g(0))
    for x, y, d, c in zip(b.inputs.tolist(), b.targets.tolist(), b.extra["distinct"].tolist(), b.extra["common"].tolist()):
        n = y[-1] - 10
        assert 0 <= n < 3 and y[:-1] == [IGNORE] * 5
        assert x[-1] == 8 + n % 2  # the query ψ(n) = n mod 2
        for t in range(5):
            assert c[t] == (x[t] in (6, 7)) and d[t] == (x[t] in (2 * n, 2 * n + 1))
            assert c[t] != d[t]  # every contextual token is one or the other
        assert not d[-1] and not c[-1]


def test_scan_snap_distinct_tokens_are_rarer_than_common_ones_and_follow_their_weights():
    task = ScanSnap(p_common=0.5, distinct_alpha=1.0)
    b = task.batch(512, "train", _g(0))
    counts = torch.bincount(b.inputs[:, :-1].flatten(), minlength=task.vocab_size).float()
    distinct, common = counts[: task.common_start], counts[task.common_start : task.query_start]
    assert distinct.mean() < common.mean()  # each distinct token co-occurs with one class only
    per_rank = distinct.view(task.next_tokens, task.distinct).sum(0)
    assert per_rank[0] > 1.5 * per_rank[1] and per_rank[1] > 1.5 * per_rank[3]  # (j+1)^-1 weights within a class
    assert b.extra["common"][:, :-1].float().mean() == pytest.approx(0.5, abs=0.02)


def test_scan_snap_metric_counts_only_the_last_position():
    task = ScanSnap()
    b = task.batch(8, "train", _g(0))
    assert torch.equal(b.mask, b.targets != IGNORE) and b.mask[:, -1].all() and not b.mask[:, :-1].any()
    V = task.vocab_size
    logits = torch.zeros(8, task.seq_len, V)
    logits[:, -1] = torch.nn.functional.one_hot(b.extra["next"], V).float()
    assert task.metric(logits, b) == 1.0
    logits[:, -1] = torch.nn.functional.one_hot(b.extra["query"], V).float()
    assert task.metric(logits, b) == 0.0


def test_scan_snap_is_registered():
    assert tasks.get("scan_snap").paper == "3"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"queries": 16}, r"queries must be an integer in \[1, 15\]"),
        ({"p_common": 1.0}, r"p_common must be in \[0, 1\)"),
        ({"distinct": 0}, r"distinct must be an integer >= 1"),
        ({"seq_len": 1}, r"seq_len must be an integer >= 2"),
        ({"distinct_alpha": -1}, "non-negative"),
    ],
)
def test_scan_snap_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        ScanSnap(**options)
