"""Datasets for representation methods: JSONL files, and small generated concept sets of graded difficulty.

Two formats (one JSON object a line):

- labelled: ``{"text": "...", "label": ..., "concept": "..."}`` (``concept`` optional: one probe
  per concept, all in one concept ``"label"`` when absent). ``probe`` needs labels; ``cka`` and
  ``match`` read the texts only.
- paired: ``{"a": "...", "b": "..."}``: the input is ``a + " " + b``, its tokens split into the
  two groups by character offsets (``align``).

Built-in sets (generated, seeded; ``n`` examples per concept):

- ``concepts``: parity of the first k of 8 bits written as text (``"1 0 1 1 0 0 1 0"``) for k = 1,
  2, 3 (harder as k grows: k = 1 is one token's identity, k > 1 an XOR), and three lexical
  concepts: ``plural`` (morphology), ``animal`` (word category), ``sum`` (whether ``a + b = c``
  is true), each sentence ending in the same word (``there``), so that the last token's state
  holds the concept only if a layer has moved it there.
- ``parity``, ``lexical``: those parts alone.
- ``paired``: numbers as digits (``a``) and as words (``b``): ``"3 1 4"`` / ``"three one four"``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from attnlab.data import read_utf8

__all__ = ["BUILTIN", "Dataset", "builtin", "load", "tokenize_pairs"]

BUILTIN = ("concepts", "parity", "lexical", "paired")
ANIMALS = [
    "dog",
    "cat",
    "horse",
    "cow",
    "sheep",
    "goat",
    "lion",
    "tiger",
    "bear",
    "wolf",
    "fox",
    "rabbit",
    "mouse",
    "duck",
    "goose",
    "eagle",
    "owl",
    "frog",
    "snake",
    "whale",
]
OBJECTS = [
    "chair",
    "table",
    "lamp",
    "spoon",
    "knife",
    "cup",
    "plate",
    "bottle",
    "hammer",
    "shovel",
    "pencil",
    "book",
    "clock",
    "phone",
    "door",
    "window",
    "brick",
    "rope",
    "coin",
    "shoe",
]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass
class Dataset:
    """``records`` of one format (``"labelled"`` or ``"paired"``), and where they came from."""

    format: str
    records: list[dict] = field(default_factory=list)
    source: str = ""

    def concepts(self) -> dict[str, list[dict]]:
        """Labelled records by concept, in first-seen order."""
        out: dict[str, list[dict]] = {}
        for r in self.records:
            out.setdefault(str(r.get("concept", "label")), []).append(r)
        return out

    def texts(self) -> list[str]:
        return [r["text"] if self.format == "labelled" else f"{r['a']} {r['b']}" for r in self.records]


def _parity(k: int, n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        bits = [rng.randint(0, 1) for _ in range(8)]
        bits[0] = (sum(bits[1:k]) + i) % 2 if k > 1 else i % 2  # balanced labels
        out.append({"text": " ".join(map(str, bits)), "label": sum(bits[:k]) % 2, "concept": f"parity{k}"})
    return out


def _lexical(n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        noun = rng.choice(ANIMALS + OBJECTS)
        plural = i % 2
        out.append({"text": f"I saw the {noun}{'s' if plural else ''} there", "label": plural, "concept": "plural"})
    for i in range(n):
        noun = rng.choice(ANIMALS if i % 2 else OBJECTS)
        out.append({"text": f"I saw the {noun} there", "label": i % 2, "concept": "animal"})
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        true = i % 2
        c = a + b if true else a + b + rng.choice([-2, -1, 1, 2])
        out.append({"text": f"I read {a} + {b} = {c} there", "label": true, "concept": "sum"})
    return out


def _paired(n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        digits = [rng.randint(0, 9) for _ in range(rng.randint(2, 4))]
        out.append({"a": " ".join(map(str, digits)), "b": " ".join(WORDS[d] for d in digits)})
    return out


def builtin(name: str, n: int = 64, seed: int = 0) -> Dataset:
    """A generated set (:data:`BUILTIN`) with ``n`` examples per concept."""
    if n < 10:
        raise ValueError(f"a built-in set needs at least 10 examples per concept for 5-fold probes, got {n=}")
    rng = random.Random(seed)
    if name == "paired":
        return Dataset("paired", _paired(n, rng), name)
    parity = [r for k in (1, 2, 3) for r in _parity(k, n, rng)] if name in ("concepts", "parity") else []
    lexical = _lexical(n, rng) if name in ("concepts", "lexical") else []
    if not parity and not lexical:
        raise ValueError(f"unknown built-in dataset {name!r}: choose one of {', '.join(BUILTIN)}, or give a JSONL file")
    return Dataset("labelled", parity + lexical, name)


def load(path: str | Path) -> Dataset:
    """Read a JSONL dataset (labelled or paired, told by its first line's keys); a malformed line is a ValueError naming it."""
    path = Path(path)
    records, fmt = [], None
    for k, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{k} is not JSON ({e.msg}): one JSON object a line") from None
        kind = "labelled" if isinstance(r, dict) and "text" in r else "paired" if isinstance(r, dict) and {"a", "b"} <= set(r) else None
        if kind is None:
            raise ValueError(f'{path}:{k} is neither {{"text", "label"}} nor {{"a", "b"}}: got {line[:80]!r}')
        if fmt is not None and kind != fmt:
            raise ValueError(f"{path}:{k} is a {kind} record in a {fmt} file: one format per file")
        fields = ("text",) if kind == "labelled" else ("a", "b")
        if not all(isinstance(r[f], str) and r[f].strip() for f in fields):
            raise ValueError(f"{path}:{k}: {', '.join(fields)} must be non-empty strings")
        fmt = kind
        records.append(r)
    if not records:
        raise ValueError(f"{path} holds no records: one JSON object a line")
    return Dataset(fmt, records, str(path))


def tokenize_pairs(tokenizer, records: list[dict]) -> tuple[list[list[int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Token ids of ``a + " " + b`` per record and the token spans ``[start, end)`` of group a and group b (by character offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("paired datasets need a fast tokenizer (character offsets): load the model's tokenizer.json")
    seqs, spans_a, spans_b = [], [], []
    for i, r in enumerate(records):
        enc = tokenizer(f"{r['a']} {r['b']}", return_offsets_mapping=True)
        cut = len(r["a"])
        a = [t for t, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < cut]
        b = [t for t, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s >= cut]
        if not a or not b or a[-1] >= b[0]:
            raise ValueError(f"record {i}: its tokens do not split into group a then group b ({r['a']!r} / {r['b']!r})")
        seqs.append(list(enc["input_ids"]))
        spans_a.append((a[0], a[-1] + 1))
        spans_b.append((b[0], b[-1] + 1))
    return seqs, spans_a, spans_b
