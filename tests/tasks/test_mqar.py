"""Paper 56: MQAR batches follow Zoology's construction and are reproducible."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.mqar import MQAR


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_mqar_same_seed_same_batch_other_seed_other_batch():
    task = MQAR(vocab_size=128, seq_len=64, pairs=8)
    a, b, c = (task.batch(4, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.inputs, task.batch(4, "test", _g(0)).inputs)  # splits use their own streams


def test_mqar_targets_are_the_values_bound_to_each_queried_key():
    task = MQAR(vocab_size=16, seq_len=16, pairs=2, random_non_queries=False)
    b = task.batch(64, "train", _g(0))
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        bound = dict(zip(x[0:4:2], x[1:4:2]))  # the context k1 v1 k2 v2
        assert len(bound) == 2 and all(1 <= k < 8 for k in bound) and all(8 <= v < 16 for v in bound.values())
        asked = [t for t in range(4, 16) if x[t] != 0]
        assert sorted(x[t] for t in asked) == sorted(bound)  # every key asked once, nothing else
        assert all((t - 4) % 2 == 0 for t in asked)  # at the first token of a slot
        assert [t for t in range(16) if y[t] != IGNORE] == asked
        assert all(y[t] == bound[x[t]] for t in asked)


def test_mqar_query_gaps_follow_the_power_law():
    task = MQAR(vocab_size=512, seq_len=256, pairs=4, power_a=0.01)
    gaps = (task.batch(512, "train", _g(0)).extra["query_pos"] - 8) // 2
    # p(i) ∝ i^(a-1): the first of 124 slots is about 20× as likely as the 20th
    first, twentieth = (gaps == 0).sum(), (gaps == 19).sum()
    assert first > 5 * twentieth
    uniform = MQAR(vocab_size=512, seq_len=256, pairs=4, power_a=1.0).batch(512, "train", _g(0))
    assert ((uniform.extra["query_pos"] - 8) // 2).float().mean() > 2 * gaps.float().mean()


def test_mqar_metric_counts_only_query_positions():
    task = MQAR(vocab_size=64, seq_len=32, pairs=4)
    b = task.batch(8, "train", _g(0))
    assert b.mask.sum() == 8 * 4 and torch.equal(b.mask, b.targets != IGNORE)
    logits = torch.randn(8, 32, 64, generator=_g(1))  # arbitrary where there is no target
    logits[b.mask] = torch.nn.functional.one_hot(b.targets[b.mask], 64).float() * 100
    assert task.metric(logits, b) == 1.0
    logits[b.mask] = torch.nn.functional.one_hot((b.targets[b.mask] + 1) % 64, 64).float() * 100
    assert task.metric(logits, b) == 0.0


def test_mqar_is_registered_with_zoology_defaults():
    task = tasks.get("mqar")
    assert (task.vocab_size, task.seq_len, task.pairs, task.power_a) == (8192, 64, 8, 0.01)
    assert task.paper == "56"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seq_len": 63}, "even"),
        ({"seq_len": 16, "pairs": 8}, r"seq_len must be an integer >= 32"),
        ({"pairs": 0}, r"pairs must be an integer >= 1"),
        ({"vocab_size": 10, "pairs": 8}, r"vocab_size must be an integer >= 18"),
        ({"power_a": 0.0}, r"\(0, 1\]"),
    ],
)
def test_mqar_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        MQAR(**options)


def test_mqar_unknown_split_raises():
    with pytest.raises(ValueError, match="valid splits are 'train', 'test'"):
        MQAR().batch(1, "systematic")
