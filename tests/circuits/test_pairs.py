"""Prompt pairs: the JSONL loader refuses bad input with the fix; generators give pairs of equal token lengths."""

import json

import pytest
import torch

from attnlab.circuits import pairs as P
from tests.conftest import char_tokenizer


def _write(tmp_path, records):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"clean": "abc", "corrupted": "abd", "answer": "x", "wrong": "y"}


def test_load_pairs_tokenises_with_the_start_token_and_batches_by_length(tmp_path):
    tok = char_tokenizer("bos")
    p = P.load_pairs(_write(tmp_path, [GOOD, GOOD | {"clean": "abcd", "corrupted": "abce"}, GOOD]), tok)
    assert len(p) == 3 and p.lengths() == [4, 5]
    assert p.clean[0].tolist() == [1, *tok("abc", add_special_tokens=False)["input_ids"]]
    shapes = [tuple(c.shape) for c, *_ in p.batches(8)]
    assert shapes == [(2, 4), (1, 5)]
    assert p.answer.tolist() == tok("xxx", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([GOOD | {"corrupted": "abcd"}], r"clean prompt is 4 tokens and the corrupted one 5: patching needs equal lengths"),
        ([GOOD | {"answer": "xy"}], r"answer='xy' is 2 tokens \['x', 'y'\], it must be one token"),
        ([GOOD | {"extra": 1}], r"unknown keys \['extra'\] and missing keys \[\]"),
        ([{"clean": "a"}], r"missing keys \['corrupted', 'answer', 'wrong'\]"),
        ([GOOD | {"wrong": 3}], "must be non-empty strings"),
    ],
)
def test_bad_pairs_raise_naming_the_pair_and_the_fix(tmp_path, records, match):
    with pytest.raises(ValueError, match=match) as e:
        P.load_pairs(_write(tmp_path, records), char_tokenizer("bos"))
    assert "pairs.jsonl pair 1" in str(e.value)


def test_empty_or_missing_file_says_what_it_needs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty: it needs one"):
        P.load_pairs(empty, char_tokenizer())
    with pytest.raises(ValueError, match="no prompt-pairs file"):
        P.load_pairs(tmp_path / "nope.jsonl", char_tokenizer())
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl line 1: not JSON"):
        P.load_pairs(bad, char_tokenizer())


def test_induction_pairs_repeat_the_first_half_and_answer_its_next_token():
    p = P.induction_pairs(3, length=5, vocab_size=30, seed=1)
    for c, x, a, w in zip(p.clean, p.corrupted, p.answer, p.wrong, strict=True):
        assert c[5:].tolist() == c[:4].tolist() and x[5:].tolist() == c[:4].tolist()
        assert int(a) == int(c[4]) and int(w) == int(x[4]) and a != w
        assert len(set(c[:5].tolist())) == 5


@pytest.mark.slow
def test_generators_give_equal_lengths_one_token_answers_on_smollm2(smollm2):
    _, tok = smollm2
    for make in (P.ioi_pairs, P.colored_objects_pairs, P.multiple_choice_pairs):
        p = make(tok, 6, seed=2)
        assert len(p) == 6
        for c, x, a, w in zip(p.clean, p.corrupted, p.answer, p.wrong, strict=True):
            assert len(c) == len(x) and not torch.equal(c, x) and a != w
    ioi = P.ioi_pairs(tok, 4)
    for r in ioi.records:  # only the repeated subject is replaced
        assert r["clean"].split(",")[0] == r["corrupted"].split(",")[0] and r["wrong"].strip() not in r["corrupted"].split(",")[1]
    mc = P.multiple_choice_pairs(tok, 4)
    for r in mc.records:
        assert sorted(r["clean"].splitlines()) != sorted(r["corrupted"].splitlines()) or r["clean"] != r["corrupted"]
        assert sorted(line[3:] for line in r["clean"].splitlines()[1:5]) == sorted(line[3:] for line in r["corrupted"].splitlines()[1:5])
