"""Paper 57: toy multiple-choice questions, their answer letters and the held-out items."""

import pytest
import torch

from attnlab import tasks
from attnlab.tasks import IGNORE
from attnlab.tasks.multiple_choice import ITEMS, LETTERS, MultipleChoice


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return MultipleChoice()


@pytest.mark.parametrize("split", ["train", "test"])
def test_multiple_choice_same_seed_same_batch_other_seed_other_batch(task, split):
    a, b, c = (task.batch(8, split, _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_multiple_choice_answer_is_the_letter_of_the_asked_item(task):
    b = task.batch(200, "train", _g(0))
    answers = []
    for r in range(200):
        words = [task.itos[int(t)] for t in b.inputs[r]]
        assert words[:3] == ["<s>", "which", "?"] and words[-2:] == ["answer", ":"]
        asked = words[3]
        options = dict(zip(words[4:12:2], words[5:12:2]))  # by hand: letter -> item
        assert list(options) == list(LETTERS) and len(set(options.values())) == 4
        right = next(letter for letter, item in options.items() if item == asked)
        assert task.itos[int(b.targets[r, -1])] == right and (b.targets[r] != IGNORE).sum() == 1
        e = {k: v[r] for k, v in b.extra.items()}
        assert LETTERS[int(e["answer"])] == right and task.itos[int(e["letter"])] == right
        assert task.itos[int(e["wrong_letter"])] in LETTERS and int(e["wrong_letter"]) != int(e["letter"])
        assert [words[int(p)] for p in e["letter_pos"]] == list(LETTERS)
        assert words[int(e["option_pos"][int(e["answer"])])] == asked
        answers.append(right)
    assert {answers.count(x) for x in LETTERS} <= set(range(30, 71))  # every slot used, roughly uniformly


def test_multiple_choice_test_asks_items_train_never_asks(task):
    def asked(split):
        b = task.batch(400, split, _g(0))
        return {task.itos[int(t)] for t in b.inputs[:, 3]}

    train, test = asked("train"), asked("test")
    assert train.isdisjoint(test) and len(test) == 5 and train | test == set(ITEMS)


def test_multiple_choice_logit_difference_reads_the_end(task):
    b = task.batch(16, "train", _g(0))
    logits = torch.zeros(16, task.seq_len, task.vocab_size)
    rows = torch.arange(16)
    logits[rows, -1, b.extra["wrong_letter"]] = 3.0
    assert task.logit_difference(logits, b) == -3.0 and task.metric(logits, b) == 0.0
    logits[rows, -1, b.extra["letter"]] = 4.0
    assert task.logit_difference(logits, b) == pytest.approx(1.0) and task.metric(logits, b) == 1.0
    logits[rows, -2, b.extra["letter"]] = 100.0  # other positions do not count
    assert task.logit_difference(logits, b) == pytest.approx(1.0)


def test_multiple_choice_is_registered():
    task = tasks.get("multiple_choice", items=8)
    assert task.paper == "57" and len(task.asked["train"]) + len(task.asked["test"]) == 8


@pytest.mark.parametrize(
    ("options", "match"),
    [({"items": 4}, r"items must be an integer in \[5, 20\]"), ({"held_out": 1.0}, r"fraction in \(0, 1\)")],
)
def test_multiple_choice_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        MultipleChoice(**options)
