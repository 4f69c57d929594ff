"""Paper 53: character LM windows are reproducible, the split keeps test text out of training, bpc is hand-checkable."""

import math

import pytest
import torch

from attnlab import data, tasks
from attnlab.tasks.char_lm import CharLM


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _cut(name, test_fraction=0.1):  # the first character of the test region, computed here from the text
    return round(len(data.text(name)) * (1 - test_fraction))


def test_char_lm_same_seed_same_windows_other_seed_other_windows():
    task = CharLM(seq_len=32)
    a, b, c = (task.batch(8, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) and torch.equal(a.extra["start"], b.extra["start"])
    assert not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.inputs, task.batch(8, "test", _g(0)).inputs)  # splits use their own streams


def test_char_lm_windows_are_the_texts_characters_shifted_by_one():
    task = CharLM(seq_len=24)
    chars = sorted(set("".join(data.text(n) for n in data.TEXTS)))
    b = task.batch(16, "test", _g(3))
    for x, y, i, s in zip(b.inputs.tolist(), b.targets.tolist(), b.extra["text"].tolist(), b.extra["start"].tolist()):
        window = data.text(data.TEXTS[i])[s : s + 25]
        assert [chars[t] for t in x] == list(window[:-1]) and [chars[t] for t in y] == list(window[1:])
    assert bool(b.mask.all())  # loss and metric at every position


@pytest.mark.parametrize("test_fraction", [0.1, 0.3])
def test_char_lm_train_and_test_windows_lie_in_disjoint_regions(test_fraction):
    task = CharLM(seq_len=64, test_fraction=test_fraction)
    cuts = torch.tensor([_cut(n, test_fraction) for n in data.TEXTS])
    for seed in range(5):
        tr, te = task.batch(256, "train", _g(seed)), task.batch(256, "test", _g(seed))
        assert ((tr.extra["start"] >= 0) & (tr.extra["start"] + 64 < cuts[tr.extra["text"]])).all()  # last target before the cut
        ends = torch.tensor([len(data.text(data.TEXTS[i])) for i in te.extra["text"].tolist()])
        assert ((te.extra["start"] >= cuts[te.extra["text"]]) & (te.extra["start"] + 64 < ends)).all()
    assert set(task.batch(512, "train", _g(0)).extra["text"].tolist()) == {0, 1, 2}  # every text is drawn from


def test_char_lm_vocabulary_covers_every_text_and_round_trips():
    task = tasks.get("char_lm")
    assert (task.seq_len, task.paper, task.vocab_size) == (128, "53", len(set("".join(data.text(n) for n in data.TEXTS))))
    for name in data.TEXTS:
        assert task.decode(task.encode(data.text(name))) == data.text(name)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        task.encode("naïve")


def test_char_lm_metric_is_minus_bits_per_character_by_hand():
    task = CharLM(seq_len=2)
    b = task.batch(1, "train", _g(0))
    V = task.vocab_size
    logits = torch.zeros(1, 2, V)
    logits[0, 0, b.targets[0, 0]] = math.log(3.0)  # p(target) = 3 / (V + 2)
    logits[0, 1, (b.targets[0, 1] + 1) % V] = math.log(5.0)  # p(target) = 1 / (V + 4)
    bpc = (-math.log2(3 / (V + 2)) - math.log2(1 / (V + 4))) / 2
    assert task.metric(logits, b) == pytest.approx(-bpc, rel=1e-6)
    assert task.metric(torch.zeros(1, 2, V), b) == pytest.approx(-math.log2(V), rel=1e-6)  # uniform: log2 V bits


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seq_len": 0}, r"seq_len must be an integer >= 1"),
        ({"test_fraction": 1.0}, r"test_fraction must be a fraction in \(0, 1\)"),
        ({"seq_len": 20_000}, "fewer than a window"),
    ],
)
def test_char_lm_bad_options_say_what_to_change(options, match):
    with pytest.raises(ValueError, match=match):
        CharLM(**options)
