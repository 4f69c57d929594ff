"""Token spans of one input sequence: the image tokens, the text tokens, a range, a word.

A vision-language model (LLaVA-style) puts its image into the language model's sequence as a run
of image tokens, all with the processor's image token id. Edits and probes that select tokens
(PAINT's ``emphasis``, VAR's ``sink_redistribute`` region, paper 49's ``knockout`` groups) take
positions; a :class:`Span` *is* a tuple of positions, so it goes wherever positions go, and it
remembers the length of the sequence it came from, so an edit can refuse it on another input.

    >>> ids = torch.tensor([[1, 7, 7, 7, 7, 20, 21, 22]])
    >>> s = Spans(ids, image_token_id=7)
    >>> s.image, s.text, s["token 5..6"]
    (Span('image', 1..4 of 8), Span('text', 0+5..7 of 8), Span('token 5..6', 5..6 of 8))
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

__all__ = ["Span", "Spans", "check_span"]


def _runs(pos: tuple[int, ...]) -> str:
    """``(0, 5, 6, 7)`` as ``0+5..7``."""
    out, i = [], 0
    while i < len(pos):
        j = i
        while j + 1 < len(pos) and pos[j + 1] == pos[j] + 1:
            j += 1
        out.append(str(pos[i]) if i == j else f"{pos[i]}..{pos[j]}")
        i = j + 1
    return "+".join(out) or "none"


class Span(tuple):
    """Sorted token positions of one sequence, with a name and the sequence's length.

    A tuple of ints: ``Emphasis(positions=span)``, ``Knockout(source=span)`` take it as they take
    a list. ``length`` lets an edit refuse it on an input of another length (:func:`check_span`).
    """

    name: str
    length: int

    def __new__(cls, positions, *, name: str, length: int) -> Span:
        pos = sorted({int(p) for p in positions})
        if pos and not (0 <= pos[0] and pos[-1] < length):
            bad = [p for p in pos if not 0 <= p < length]
            raise ValueError(f"span {name!r} holds positions {bad[:5]} outside the sequence of {length} tokens (0..{length - 1})")
        span = super().__new__(cls, pos)
        span.name, span.length = name, length
        return span

    def __repr__(self) -> str:
        return f"Span({self.name!r}, {_runs(tuple(self))} of {self.length})"

    def subset(self, index, name: str | None = None) -> Span:
        """The span's ``index``-th positions (``index``: ints or a ``[n]`` bool/long tensor relative to the span).

        Example:
            >>> Span(range(4, 8), name="image", length=9).subset([0, 3])
            Span('image[0+3]', 4+7 of 9)
        """
        idx = torch.as_tensor(index)
        idx = torch.nonzero(idx).flatten() if idx.dtype == torch.bool else idx.flatten()
        if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < len(self)):
            raise ValueError(f"subset of {self!r}: indices must lie in 0..{len(self) - 1}, got {idx.tolist()[:8]}")
        picked = [self[int(i)] for i in idx]
        return Span(picked, name=name or f"{self.name}[{_runs(tuple(sorted(int(i) for i in idx)))}]", length=self.length)


def check_span(group, length: int, what: str) -> None:
    """Raise ``ValueError`` when ``group`` is a :class:`Span` of a sequence whose length is not ``length``."""
    if isinstance(group, Span) and group.length != length:
        raise ValueError(
            f"{what}: {group!r} comes from a sequence of {group.length} tokens, the input has {length}: "
            "build the spans from this input (Spans(input_ids, ...))"
        )


class Spans:
    """The spans of one sequence ``input_ids`` ``[T]`` or ``[1, T]``: ``image``, ``text``, ``token i..j``, ``word:w``.

    Args:
        input_ids: the sequence as the model receives it (image tokens expanded by the processor).
        image_token_id: the id of an image token (``model.config.image_token_id``); None for a
            text-only sequence (then ``image`` raises).
        tokenizer: what :meth:`word` encodes a word with (a transformers tokenizer); None: no words.

    A spec string names a span (:meth:`__getitem__`): ``"image"``, ``"text"``, ``"token 3..7"``
    (inclusive), ``"word:cat"`` (its first occurrence in the text), ``"word:cat#2"`` (the third).
    """

    def __init__(self, input_ids: Tensor, image_token_id: int | None = None, tokenizer=None):
        ids = torch.as_tensor(input_ids)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"Spans: input_ids must be one sequence, [T] or [1, T], got shape {list(input_ids.shape)}")
        self.ids, self.image_token_id, self.tokenizer = ids.cpu(), image_token_id, tokenizer
        self.length = int(ids.shape[0])

    @property
    def image(self) -> Span:
        """Every position holding the image token id."""
        if self.image_token_id is None:
            raise ValueError("Spans: no image token id was given (the model has none?): pass image_token_id=model.config.image_token_id")
        pos = torch.nonzero(self.ids == self.image_token_id).flatten().tolist()
        if not pos:
            raise ValueError(f"Spans: the sequence has no image token (id {self.image_token_id}): was the image passed to the processor?")
        return Span(pos, name="image", length=self.length)

    @property
    def text(self) -> Span:
        """Every position that is not an image token."""
        keep = torch.ones(self.length, dtype=torch.bool) if self.image_token_id is None else self.ids != self.image_token_id
        return Span(torch.nonzero(keep).flatten().tolist(), name="text", length=self.length)

    def tokens(self, i: int, j: int) -> Span:
        """Positions ``i..j``, inclusive."""
        if not (0 <= i <= j < self.length):
            raise ValueError(
                f"Spans: token {i}..{j} is not a range inside the sequence of {self.length} tokens (0 <= i <= j <= {self.length - 1})"
            )
        return Span(range(i, j + 1), name=f"token {i}..{j}", length=self.length)

    def word(self, word: str, occurrence: int = 0) -> Span:
        """The tokens of ``word`` in the text: its ``occurrence``-th match, as encoded with and without a leading space."""
        if self.tokenizer is None:
            raise ValueError("Spans: finding a word needs the tokenizer: Spans(input_ids, image_token_id, tokenizer=processor.tokenizer)")
        seq = self.ids.tolist()
        matches: dict[int, int] = {}  # start -> number of tokens, over both forms (with a leading space first)
        for form in (" " + word, word):
            pieces = self.tokenizer(form, add_special_tokens=False)["input_ids"]
            for i in range(self.length - len(pieces) + 1):
                if pieces and seq[i : i + len(pieces)] == pieces and self.ids[i] != self.image_token_id:
                    matches.setdefault(i, len(pieces))
        if len(matches) <= occurrence:
            text = self.tokenizer.decode([t for t in seq if t != self.image_token_id])
            raise ValueError(
                f"Spans: the word {word!r} occurs {len(matches)} time(s) in the text, wanted occurrence {occurrence}; the text reads {text!r}"
            )
        start = sorted(matches)[occurrence]
        n = matches[start]
        return Span(range(start, start + n), name=f"word:{word}" + (f"#{occurrence}" if occurrence else ""), length=self.length)

    def __getitem__(self, spec: str) -> Span:
        if spec == "image":
            return self.image
        if spec == "text":
            return self.text
        m = re.fullmatch(r"token (\d+)\s*\.\.\s*(\d+)", spec)
        if m:
            return self.tokens(int(m[1]), int(m[2]))
        m = re.fullmatch(r"word:(.+?)(?:#(\d+))?", spec)
        if m:
            return self.word(m[1], int(m[2] or 0))
        raise ValueError(
            f"Spans: unknown span {spec!r}: use 'image', 'text', 'token i..j' or 'word:w' ('word:w#1' for its second occurrence)"
        )
