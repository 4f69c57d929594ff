"""How a model's sequences start, in one place: every run that feeds text windows to a model uses it.

A tokenizer declares how it starts a sequence by what it adds around a text: Llama-2, Gemma and
Mistral tokenizers put a BOS token first, BERT puts ``[CLS]`` first and ``[SEP]`` last, GPT-2 and
SmolLM2 add nothing. A window cut from the middle of a long text must start the same way, or the
model sees a sequence unlike any it was trained on (without its BOS a model's attention sink has
nowhere to sit, and perplexity can be several times too high). Functions here:

- :func:`start_tokens` / :func:`end_tokens`: what the tokenizer adds before and after a text;
- :func:`encode`: a text's ids without special tokens;
- :func:`sequence`: ids made into a whole sequence as the tokenizer makes one (start + ids + end);
- :func:`prompt`: ids made into a prompt for a causal LM to continue (start + ids);
- :func:`text_windows`: consecutive windows of a text, each a whole sequence;
- :func:`rolling_windows`: windows with context for perplexity (lm-evaluation-harness's
  ``loglikelihood_rolling``, with every window starting as the tokenizer starts a sequence).

Example:
    >>> from transformers import AutoTokenizer                        # doctest: +SKIP
    >>> start_tokens(AutoTokenizer.from_pretrained("meta-llama/Llama-2-7b-hf"))  # doctest: +SKIP
    [1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Window", "encode", "end_tokens", "prompt", "rolling_windows", "sequence", "start_tokens", "text_windows"]

_PROBE = "Hello world"  # any text: only what the tokenizer adds around it matters


def _around(tokenizer) -> tuple[list[int], list[int]]:
    """``(before, after)``: the ids the tokenizer adds before and after a text."""
    full = list(tokenizer(_PROBE)["input_ids"])
    bare = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise ValueError(
        f"{type(tokenizer).__name__} changes a text's own tokens when it adds special tokens "
        f"({_PROBE!r}: {full} with, {bare} without): attnlab cannot tell where its sequences start; "
        "give a tokenizer whose special tokens only surround the text"
    )


def start_tokens(tokenizer) -> list[int]:
    """The ids ``tokenizer`` puts before a text: ``[bos]`` when it adds a BOS, BERT's ``[CLS]``, else ``[]``."""
    return _around(tokenizer)[0]


def end_tokens(tokenizer) -> list[int]:
    """The ids ``tokenizer`` puts after a text: BERT's ``[SEP]``; ``[]`` for causal LMs (they add no EOS)."""
    return _around(tokenizer)[1]


def encode(tokenizer, text: str) -> list[int]:
    """``text``'s ids without special tokens (a long text is encoded once, then cut into windows)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # long texts are cut into windows: no length warning


def _wrap(tokenizer, ids: Sequence[int] | Tensor, *, close: bool) -> Tensor:
    """``[1, start + ids (+ end when close)]``; ids that already begin (end) with those tokens get no second copy."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    before, after = _around(tokenizer)
    head = [] if before and ids[: len(before)] == before else before
    tail = [] if not close or (after and ids[len(ids) - len(after) :] == after) else after
    return torch.tensor([head + ids + tail], dtype=torch.long)


def sequence(tokenizer, ids: Sequence[int] | Tensor) -> Tensor:
    """``ids`` as the tokenizer makes a sequence: ``[1, start + ids + end]`` (long).

    Ids that already begin with the start tokens (a chat template that writes its BOS) get
    no second copy.
    """
    return _wrap(tokenizer, ids, close=True)


def prompt(tokenizer, ids: Sequence[int] | Tensor) -> Tensor:
    """``ids`` as a prompt for a causal LM to continue: ``[1, start + ids]`` (no end tokens).

    Ids that already begin with the start tokens (a chat template that writes its BOS) get
    no second copy.
    """
    return _wrap(tokenizer, ids, close=False)


def text_windows(tokenizer, text: str, windows: int, window: int, *, what: str = "the text") -> list[Tensor]:
    """``windows`` consecutive windows of ``text``, each a whole sequence ``[1, window]``.

    Each holds the tokenizer's start and end tokens around ``window − len(start) − len(end)`` text
    tokens; the next window goes on where the last one stopped.
    """
    before, after = _around(tokenizer)
    n = window - len(before) - len(after)
    if n < 1:
        raise ValueError(f"window {window} leaves no room for text after the tokenizer's {len(before) + len(after)} special tokens")
    ids = encode(tokenizer, text)
    if len(ids) < windows * n:
        raise ValueError(f"{what} has {len(ids)} tokens, fewer than windows × {n} = {windows * n} (windows of {window} positions)")
    return [sequence(tokenizer, ids[w * n : (w + 1) * n]) for w in range(windows)]


@dataclass(frozen=True)
class Window:
    """One forward pass of a rolling evaluation: the input, and which of its predictions are scored.

    The logits at positions ``logits_from .. logits_from + len(targets)`` of ``input_ids`` predict
    ``targets``: the text tokens ``text_start .. text_start + len(targets)``.
    """

    input_ids: Tensor  # [1, T]
    targets: Tensor  # [n] long
    logits_from: int
    text_start: int


def rolling_windows(
    ids: Sequence[int], start: Sequence[int], *, window: int, stride: int | None = None, prefix_token: int | None = None
) -> list[Window]:
    """Windows that score every token of ``ids`` once, each pass at most ``window`` positions long.

    The scheme of lm-evaluation-harness's ``loglikelihood_rolling``
    (``get_rolling_token_windows`` with ``context_len = window − stride + 1``) and of HF's strided
    perplexity: the first window scores every token it reaches; each later one scores the next
    ``stride`` tokens and fills the rest of its positions with the tokens before them, so a scored
    token sees between ``window − stride`` and ``window − 1`` positions of context
    (``stride = window``: consecutive windows, the only setting lm-eval's ``loglikelihood_rolling`` uses).

    Every window starts with ``start`` (the tokenizer's start tokens, :func:`start_tokens`). The
    first text token is scored only when something precedes it: ``start``, or ``prefix_token``,
    which stands before the text in the first window only: lm-eval's convention (BOS when the
    tokenizer has one, else EOS) for tokenizers that add no start token.

    Args:
        ids: the text's ids without special tokens (:func:`encode`).
        start: ids every window starts with.
        window: positions of one forward pass, start tokens included.
        stride: tokens scored per window after the first (default ``window − len(start)``).
        prefix_token: placed before the text in the first window when ``start`` is empty.

    Example:
        >>> [(w.input_ids.tolist(), w.targets.tolist()) for w in rolling_windows([5, 6, 7, 8, 9], [1], window=3, stride=1)]
        [([[1, 5, 6]], [5, 6, 7]), ([[1, 6, 7]], [8]), ([[1, 7, 8]], [9])]
    """
    ids, start = list(ids), list(start)
    room = window - len(start)  # text positions in a later window
    stride = room if stride is None else stride
    if prefix_token is not None and start:
        raise ValueError("prefix_token stands in for absent start tokens, and this tokenizer starts its sequences itself")
    if room < 1:
        raise ValueError(f"window {window} leaves no room for text after the {len(start)} start tokens")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= room:
        raise ValueError(f"stride must be a whole number from 1 to {room} (window − start tokens), got {stride!r}")
    head = start or ([prefix_token] if prefix_token is not None else [])
    scored_from = 0 if head else 1
    done = min(window - len(head) + 1, len(ids))  # the first window reaches these text tokens
    out = []
    if done > scored_from:
        x = torch.tensor([head + ids[: done - 1]])
        out.append(Window(x, torch.tensor(ids[scored_from:done]), len(head) + scored_from - 1, scored_from))
    while done < len(ids):
        end = min(done + stride, len(ids))
        lo = max(0, end - 1 - room)  # the context: the room − (end − done) tokens before the targets, and their inputs
        x = torch.tensor([start + ids[lo : end - 1]])
        out.append(Window(x, torch.tensor(ids[done:end]), len(start) + done - 1 - lo, done))
        done = end
    return out
