"""Paper 41: in-context classification sequences, their labels and their ICL / IWL splits."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.icl_classification import ICLClassification


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _decode(task, inputs):
    """Items → (global class, exemplar); labels as they are."""
    L, E, N = task.labels, task.exemplars, task.context
    items = torch.cat([inputs[:, 0 : 2 * N : 2], inputs[:, -1:]], 1) - L
    return items // E, items % E, inputs[:, 1 : 2 * N : 2]


@pytest.mark.parametrize("split", ICLClassification().splits())
def test_icl_same_seed_same_batch_other_seed_other_batch(split):
    task = ICLClassification(p_icl=0.5, p_bursty=0.5)
    a, b, c = (task.batch(8, split, _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_icl_known_classes_carry_label_class_mod_L_and_the_target_is_the_query_label():
    task = ICLClassification(classes=64, labels=8, context=8, burstiness=2, p_bursty=0.5)
    b = task.batch(256, "train", _g(0))
    cls, ex, lab = _decode(task, b.inputs)
    assert (cls < 64).all() and (ex < 4).all()
    assert torch.equal(lab, cls[:, :8] % 8)  # Reddy's class k → label k mod L
    assert torch.equal(b.targets[:, 16], cls[:, 8] % 8) and (b.targets[:, :16] == IGNORE).all()
    assert torch.equal(b.mask, b.targets != IGNORE) and b.mask.sum() == 256
    counts = (cls[:, :8] == cls[:, 8:]).sum(-1)
    bursty = b.extra["bursty"]
    assert (counts[bursty] >= 2).all()  # B = 2 items of the query's class (more if a class is drawn twice)
    assert 0.3 < bursty.float().mean() < 0.7 and torch.equal(counts, b.extra["query_in_context"])


def test_icl_zipf_makes_class_zero_the_most_frequent():
    task = ICLClassification(classes=64, labels=8, zipf=1.0, burstiness=0)
    cls = _decode(task, task.batch(512, "train", _g(0)).inputs)[0]
    freq = torch.bincount(cls.flatten(), minlength=64).float()
    assert freq[0] > 3 * freq[10] and freq[0] / freq.sum() == pytest.approx(1 / sum(1 / k for k in range(1, 65)), rel=0.15)


def test_icl_in_context_split_uses_held_out_classes_with_labels_only_the_context_gives():
    task = ICLClassification(classes=64, labels=8, p_icl=0.5)
    train = task.batch(512, "train", _g(0))
    test = task.batch(256, "in_context", _g(0))
    train_items, test_items = set(train.inputs[:, 0::2].flatten().tolist()), set(test.inputs[:, 0::2].flatten().tolist())
    assert train_items.isdisjoint(test_items)  # never-seen classes
    cls, _, lab = _decode(task, test.inputs)
    assert (cls >= 64 + task.novel_classes).all() and test.extra["novel"].all()
    for row in range(256):
        shown = {int(c): int(lb) for c, lb in zip(cls[row, :8], lab[row])}
        assert len(set(shown.values())) == len(shown)  # one fresh label per class
        assert int(test.targets[row, 16]) == shown[int(cls[row, 8])]
        assert int(test.inputs[row, 16]) in test.inputs[row, 0:16:2].tolist()  # the query repeats a context exemplar
    labels_of = {}
    for c, lb in zip(cls[:, :8].flatten().tolist(), lab.flatten().tolist()):
        labels_of.setdefault(c, set()).add(lb)
    assert max(map(len, labels_of.values())) > 1  # a novel class has no fixed label across sequences


def test_icl_in_weights_split_hides_the_query_class_from_the_context():
    task = ICLClassification(classes=64, labels=8, zipf=1.0)
    b = task.batch(256, "in_weights", _g(0))
    cls, _, lab = _decode(task, b.inputs)
    assert (cls[:, :8] != cls[:, 8:]).all() and (b.extra["query_in_context"] == 0).all()
    assert torch.equal(b.targets[:, 16], cls[:, 8] % 8)


def test_icl_permuted_labels_contradict_the_memorised_labels_consistently():
    task = ICLClassification(classes=64, labels=8)
    b = task.batch(256, "permuted_labels", _g(0))
    cls, _, lab = _decode(task, b.inputs)
    shift = (lab - cls[:, :8] % 8) % 8
    assert (shift == shift[:, :1]).all() and (shift != 0).all()  # one non-zero offset per sequence
    assert torch.equal(b.targets[:, 16], (cls[:, 8] % 8 + shift[:, 0]) % 8)
    assert (cls < 64).all()


def test_icl_metric_is_query_label_accuracy():
    task = ICLClassification(classes=64, labels=8)
    b = task.batch(16, "train", _g(0))
    V = task.vocab_size
    logits = torch.zeros(16, task.seq_len, V)
    logits[:, :, 0] = 1.0  # token 0 everywhere ...
    logits[:, -1] = torch.nn.functional.one_hot(b.targets[:, -1], V).float() * 2  # ... right at the query
    assert task.metric(logits, b) == 1.0
    logits[:, -1] = torch.nn.functional.one_hot((b.targets[:, -1] + 1) % 8, V).float() * 2
    assert task.metric(logits, b) == 0.0


def test_icl_is_registered_with_the_papers_sizes():
    task = tasks.get("icl_classification")
    assert (task.context, task.labels, task.burstiness, task.seq_len, task.paper) == (8, 32, 4, 17, "41")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"burstiness": 3}, r"divisor of context below it \[1, 2, 4\]"),
        ({"burstiness": 8}, r"burstiness must be an integer in \[0, 7\]"),
        ({"classes": 100, "labels": 32}, "multiple of labels"),
        ({"context": 7}, "even"),
        ({"zipf": -1.0}, "non-negative"),
        ({"p_icl": 1.5}, r"p_icl must be a probability in \[0, 1\]"),
        ({"exemplars": 0}, r"exemplars must be an integer >= 1"),
    ],
)
def test_icl_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        ICLClassification(**options)
