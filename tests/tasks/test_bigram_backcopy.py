"""Paper 68: Bigram-Backcopy sequences copy after triggers and follow the text's bigrams elsewhere."""

from collections import Counter

import pytest
import torch

from attnlab import data, tasks
from attnlab.tasks.bigram_backcopy import BigramBackcopy


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return BigramBackcopy(seq_len=64)


def test_bigram_backcopy_same_seed_same_batch_other_seed_other_batch(task):
    a, b, c = (task.batch(4, "train", _g(s)) for s in (0, 0, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_bigram_backcopy_triggers_are_the_most_frequent_characters(task):
    top3 = [ch for ch, _ in Counter(data.text("tempest")).most_common(3)]
    assert [task.itos[int(i)] for i in task.trigger_ids] == top3 == [" ", "e", "t"]


def test_bigram_backcopy_copies_after_triggers_and_samples_text_bigrams_elsewhere(task):
    text = data.text("tempest")
    seen = {text[i : i + 2] for i in range(len(text) - 1)} | {text[-1] + text[0]}
    b = task.batch(16, "train", _g(0))
    triggers = {" ", "e", "t"}
    for x, y, m in zip(b.inputs.tolist(), b.targets.tolist(), b.mask.tolist()):
        chars = [task.itos[i] for i in x]
        assert chars[0] == "<s>" and "<s>" not in chars[1:] and chars[1] not in triggers
        assert x[1:] == y[:-1]  # targets are the next tokens
        for t in range(1, len(x)):
            assert m[t] == (chars[t] in triggers)
            if chars[t] in triggers:
                assert y[t] == x[t - 1] and chars[t - 1] not in triggers  # backcopy; never two triggers in a row
            else:
                assert chars[t] + task.itos[y[t]] in seen  # a bigram that occurs in the text


def test_bigram_backcopy_transition_rows_are_the_text_bigram_frequencies(task):
    text = data.text("tempest")
    a = "q"
    following = Counter(text[i + 1] for i in range(len(text) - 1) if text[i] == a)
    row = task.transition[task.itos.index(a)]
    for ch, count in following.items():
        assert row[task.itos.index(ch)].item() == pytest.approx(count / sum(following.values()))


def test_bigram_backcopy_metric_counts_only_trigger_positions(task):
    b = task.batch(4, "train", _g(0))
    assert torch.equal(b.mask, b.extra["trigger"]) and torch.equal(~b.mask, b.extra["bigram"])
    V = task.vocab_size
    logits = torch.nn.functional.one_hot((b.targets + 1) % V, V).float()  # wrong everywhere ...
    logits[b.mask] = torch.nn.functional.one_hot(b.targets[b.mask], V).float()  # ... except at triggers
    assert task.metric(logits, b) == 1.0
    assert task.metric(torch.nn.functional.one_hot((b.targets + 1) % V, V).float(), b) == 0.0


def test_bigram_backcopy_is_registered():
    task = tasks.get("bigram_backcopy", seq_len=8)
    assert task.paper == "68" and task.seq_len == 8 and task.triggers == 3


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"triggers": 0}, r"triggers must be an integer in \[1, 69\]"),
        ({"seq_len": 1}, r"seq_len must be an integer >= 2"),
        ({"text": "hamlet"}, "choose from tempest, sonnets, lucrece"),
    ],
)
def test_bigram_backcopy_bad_options_name_the_valid_range(options, match):
    with pytest.raises(ValueError, match=match):
        BigramBackcopy(**options)
