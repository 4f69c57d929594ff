"""Prompt pairs for patching: a clean prompt, a corrupted one of the same token length, and two one-token answers.

The JSONL format (one pair a line; ``answer`` and ``wrong`` are the continuations whose logits
are compared, each exactly one token after the prompt, usually with its leading space)::

    {"clean": "When Mary and John went to the store, John gave a drink to", "corrupted": "When Mary and John went to the store, Emma gave a drink to", "answer": " Mary", "wrong": " John"}

Prompts start as the tokenizer starts a sequence (:func:`attnlab.data.tokens.prompt`: BOS when it
adds one). Built-in generators: :func:`ioi_pairs`, :func:`induction_pairs`,
:func:`colored_objects_pairs` (paper 5) and :func:`multiple_choice_pairs` (paper 57).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from attnlab.data import read_utf8
from attnlab.data import tokens as T

__all__ = [
    "KEYS",
    "Pairs",
    "colored_objects_pairs",
    "from_ids",
    "from_records",
    "induction_pairs",
    "ioi_pairs",
    "load_pairs",
    "multiple_choice_pairs",
]

KEYS = ("clean", "corrupted", "answer", "wrong")


@dataclass
class Pairs:
    """Tokenised prompt pairs.

    Attributes:
        clean, corrupted: one ``[T_i]`` id tensor per pair; a pair's two prompts have the same length.
        answer, wrong: ``[N]`` token ids whose logits the metrics compare.
        records: the text records the pairs came from (empty for pairs built from ids).
    """

    clean: list[Tensor]
    corrupted: list[Tensor]
    answer: Tensor
    wrong: Tensor
    records: list[dict]

    def __len__(self) -> int:
        return len(self.clean)

    def lengths(self) -> list[int]:
        """The distinct token lengths, ascending."""
        return sorted({len(c) for c in self.clean})

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``(clean [B, T], corrupted [B, T], answer [B], wrong [B])``: pairs of one length at a time, in order."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got batch_size={batch_size!r}")
        for n in self.lengths():
            idx = [i for i, c in enumerate(self.clean) if len(c) == n]
            for s in range(0, len(idx), batch_size):
                b = idx[s : s + batch_size]
                yield (
                    torch.stack([self.clean[i] for i in b]),  # [B, T]
                    torch.stack([self.corrupted[i] for i in b]),  # [B, T]
                    self.answer[b],
                    self.wrong[b],
                )


def from_ids(clean: Sequence[Sequence[int]], corrupted: Sequence[Sequence[int]], answer: Sequence[int], wrong: Sequence[int]) -> Pairs:
    """Pairs from token ids (models without a tokenizer); the lengths are checked as :func:`from_records` does."""
    if not (len(clean) == len(corrupted) == len(answer) == len(wrong)) or not clean:
        raise ValueError(
            f"clean, corrupted, answer and wrong must be non-empty and equally long, got {len(clean)}, {len(corrupted)}, {len(answer)}, {len(wrong)}"
        )
    cl = [torch.as_tensor(c, dtype=torch.long) for c in clean]
    co = [torch.as_tensor(c, dtype=torch.long) for c in corrupted]
    for i, (a, b) in enumerate(zip(cl, co, strict=True)):
        if len(a) != len(b):
            raise ValueError(
                f"pair {i}: clean has {len(a)} tokens, corrupted {len(b)}: patching needs equal lengths; make the prompts tokenise alike"
            )
    return Pairs(cl, co, torch.as_tensor(answer, dtype=torch.long), torch.as_tensor(wrong, dtype=torch.long), [])


def _one_token(tokenizer, text: str, where: str, key: str) -> int:
    ids = T.encode(tokenizer, text)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"{where}: {key}={text!r} is {len(ids)} tokens {pieces}, it must be one token: choose a word the tokenizer keeps whole "
            "(often with a leading space, ' Mary')"
        )
    return ids[0]


def from_records(records: Sequence[dict], tokenizer, *, source: str = "pair") -> Pairs:
    """Tokenise ``{"clean", "corrupted", "answer", "wrong"}`` records.

    Raises:
        ValueError: no records; a record with missing or unknown keys or non-string values; a
            pair whose prompts tokenise to different lengths; an answer that is not one token
            (the message gives its tokens).
    """
    if not records:
        raise ValueError(f"{source}: no prompt pairs: give at least one {{'clean', 'corrupted', 'answer', 'wrong'}} record")
    clean, corrupted, answer, wrong = [], [], [], []
    for i, r in enumerate(records):
        where = f"{source} {i + 1}"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: a pair is a JSON object with keys {', '.join(KEYS)}, got {type(r).__name__}")
        unknown, missing = sorted(set(r) - set(KEYS)), [k for k in KEYS if k not in r]
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown} and missing keys {missing}: a pair has exactly the keys {', '.join(KEYS)}")
        if not all(isinstance(r[k], str) and r[k] for k in KEYS):
            raise ValueError(f"{where}: {', '.join(KEYS)} must be non-empty strings, got {r!r}")
        a, b = (T.prompt(tokenizer, T.encode(tokenizer, r[k]))[0] for k in ("clean", "corrupted"))
        if len(a) != len(b):
            raise ValueError(
                f"{where}: the clean prompt is {len(a)} tokens and the corrupted one {len(b)}: patching needs equal lengths; "
                "change words so that both tokenise alike (swap names for names of the same token length)"
            )
        clean.append(a)
        corrupted.append(b)
        answer.append(_one_token(tokenizer, r["answer"], where, "answer"))
        wrong.append(_one_token(tokenizer, r["wrong"], where, "wrong"))
    return Pairs(clean, corrupted, torch.tensor(answer), torch.tensor(wrong), [dict(r) for r in records])


def load_pairs(path: str | Path, tokenizer) -> Pairs:
    """Read a JSONL file of pairs (module docstring: the format); errors name the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"no prompt-pairs file at {str(path)!r}: give a JSONL file with one {{'clean', 'corrupted', 'answer', 'wrong'}} object a line"
        )
    records = []
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path.name} line {n}: not JSON ({e.msg}): each line is one pair object") from None
    if not records:
        raise ValueError(f"{path.name} is empty: it needs one {{'clean', 'corrupted', 'answer', 'wrong'}} object a line")
    return from_records(records, tokenizer, source=f"{path.name} pair")


def _pick(g: torch.Generator, options: Sequence, k: int = 1) -> list:
    return [options[i] for i in torch.randperm(len(options), generator=g)[:k].tolist()]


def _same_length(tokenizer, a: str, b: str) -> bool:
    return len(T.encode(tokenizer, a)) == len(T.encode(tokenizer, b))


def _enough(records: list, n: int, task: str) -> None:
    if len(records) < n:
        raise ValueError(
            f"found {len(records)} of {n} {task} pairs whose prompts tokenise to equal lengths with this tokenizer: use a pairs file (load_pairs)"
        )


def ioi_pairs(tokenizer, n: int = 8, *, seed: int = 0) -> Pairs:
    """Indirect-object pairs: the corrupted prompt names a third person in place of the repeated subject.

    Paper: 5 (Circuit component reuse) and Wang et al.'s IOI "ABC" corruption: clean "When Mary
    and John went to the store, John gave a drink to" (answer " Mary", wrong " John"), corrupted
    "... Emma gave a drink to", where nothing tells the indirect object from the subject. The
    third name has the replaced name's token length. Prompts from
    :func:`attnlab.runs.evaluate.ioi_prompts`.
    """
    from attnlab.runs.evaluate import _NAMES, ioi_prompts

    g = torch.Generator().manual_seed(seed)
    records = []
    for prompt, right, wrong in ioi_prompts(n, seed=seed):
        subject = wrong.strip()
        others = [c for c in _pick(g, _NAMES, len(_NAMES)) if f" {c}" not in (right, wrong) and _same_length(tokenizer, f" {c}", wrong)]
        if not others:
            raise ValueError(f"no third name tokenises like {wrong!r} for this tokenizer: use a pairs file (load_pairs)")
        corrupted = prompt.replace(f", {subject} gave", f", {others[0]} gave")
        records.append({"clean": prompt, "corrupted": corrupted, "answer": right, "wrong": wrong})
    return from_records(records, tokenizer, source="ioi pair")


def induction_pairs(n: int = 8, *, length: int = 10, vocab_size: int | None = None, tokenizer=None, seed: int = 0) -> Pairs:
    """Repeated random tokens: clean ``s s[:-1]`` (answer ``s[-1]``), corrupted ``s' s[:-1]`` (wrong ``s'[-1]``).

    ``s`` and ``s'`` are ``length`` distinct random tokens; in the corrupted prompt the first half
    no longer predicts the second, so an induction head would copy ``s'[-1]`` instead. Ids are drawn
    from ``0 .. vocab_size − 1`` (a tiny model) or from the tokenizer's vocabulary without its
    special tokens, after its start tokens.
    """
    if (vocab_size is None) == (tokenizer is None):
        raise ValueError("give exactly one of vocab_size (token ids of a model without a tokenizer) or tokenizer")
    if tokenizer is not None:
        special = set(tokenizer.all_special_ids)
        pool = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        start = T.start_tokens(tokenizer)
    else:
        pool, start = torch.arange(vocab_size), []
    if length < 2 or 2 * length > len(pool):
        raise ValueError(f"length must be in 2..{len(pool) // 2} for a vocabulary of {len(pool)} tokens, got length={length}")
    g = torch.Generator().manual_seed(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n):
        both = pool[torch.randperm(len(pool), generator=g)[: 2 * length]].tolist()
        s, s2 = both[:length], both[length:]
        clean.append(start + s + s[:-1])
        corrupted.append(start + s2 + s[:-1])
        answer.append(s[-1])
        wrong.append(s2[-1])
    return from_ids(clean, corrupted, answer, wrong)


_COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "pink")
_THINGS = ("pen", "book", "cup", "ball", "key", "hat", "box", "phone", "bag", "shoe")


def colored_objects_pairs(tokenizer, n: int = 8, *, seed: int = 0) -> Pairs:
    """Colored Objects: "On the table, I see a blue pen, a red book, and a green cup. What color is the book? Answer:".

    Paper: 5 (Circuit component reuse; the BIG-Bench reasoning_about_colored_objects task). The
    corrupted prompt asks about another object on the table (same token length); answer is the
    asked object's colour, wrong the other object's.
    """
    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(100 * n):
        if len(records) == n:
            break
        colors, things = _pick(g, _COLORS, 3), _pick(g, _THINGS, 3)
        scene = f"On the table, I see a {colors[0]} {things[0]}, a {colors[1]} {things[1]}, and a {colors[2]} {things[2]}."
        ask, other = _pick(g, range(3), 2)
        clean, corrupted = (f"{scene} What color is the {things[i]}? Answer:" for i in (ask, other))
        one_token = all(len(T.encode(tokenizer, f" {colors[i]}")) == 1 for i in (ask, other))
        if one_token and _same_length(tokenizer, clean, corrupted):
            records.append({"clean": clean, "corrupted": corrupted, "answer": f" {colors[ask]}", "wrong": f" {colors[other]}"})
    _enough(records, n, "colored objects")
    return from_records(records, tokenizer, source="colored objects pair")


_QUESTIONS = (
    ("Which of these is a fruit?", "apple", ("car", "chair", "shoe")),
    ("Which of these is an animal?", "dog", ("table", "cloud", "spoon")),
    ("Which of these is a color?", "green", ("river", "door", "bread")),
    ("Which of these is a number?", "seven", ("tree", "lamp", "shirt")),
    ("Which of these can fly?", "bird", ("rock", "fish", "brick")),
    ("Which of these is a drink?", "water", ("stone", "paper", "wheel")),
)
_LETTERS = "ABCD"


def multiple_choice_pairs(tokenizer, n: int = 8, *, seed: int = 0) -> Pairs:
    """A toy multiple-choice task: question, options A-D, answer letter; corrupted = the options permuted.

    Paper: 57 (Circuit analysis at scale: MMLU-style letters). The correct option moves to another
    letter in the corrupted prompt; answer is the clean letter, wrong the corrupted one.
    """
    g = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(100 * n):
        if len(records) == n:
            break
        question, right, distractors = _QUESTIONS[int(torch.randint(len(_QUESTIONS), (1,), generator=g))]
        a, b = (_pick(g, [right, *distractors], 4) for _ in range(2))
        if a.index(right) == b.index(right):
            continue
        clean, corrupted = (question + "".join(f"\n{L}. {o}" for L, o in zip(_LETTERS, opts, strict=True)) + "\nAnswer:" for opts in (a, b))
        if _same_length(tokenizer, clean, corrupted):
            records.append(
                {"clean": clean, "corrupted": corrupted, "answer": f" {_LETTERS[a.index(right)]}", "wrong": f" {_LETTERS[b.index(right)]}"}
            )
    _enough(records, n, "multiple choice")
    return from_records(records, tokenizer, source="multiple choice pair")
