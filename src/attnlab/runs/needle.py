"""Needle-in-a-haystack trials (paper 33, "Retrieval Head Mechanistically Explains Long-Context Factuality").

A needle sentence is hidden at some depth of a long haystack (shipped with attnlab:
:func:`attnlab.data.haystack`) and the model answers a question about it with greedy decoding
and a KV cache. The answer recalls the needle when the ROUGE-1 recall of the needle sentence is
above 50%, computed as the paper's code does: ``rouge_score.rouge_scorer.RougeScorer(["rouge1"],
use_stemmer=True)`` (words lower-cased, Porter-stemmed; ``stemmer=False`` keeps words as written). :func:`needle_in_a_haystack` runs the trials over
context lengths × depths and feeds a :class:`attnlab.probes.Retrieval` probe every decode step
after the prefill, which scores the retrieval heads.

The prompt fits the model (:func:`prompt_style`): an instruct model's chat template when its
tokenizer has one (the paper's setting); otherwise a one-shot completion prompt, a worked example
of a text, a question and an answer quoting the text, so that a base model answers instead of
repeating the question. Every prompt starts as the tokenizer starts a sequence
(:func:`attnlab.data.tokens.prompt`).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnlab.core import attach
from attnlab.core.site import Edit
from attnlab.data import tokens as T
from attnlab.models.hf_load import input_device
from attnlab.probes.retrieval import Retrieval
from attnlab.runs.edit import prepare

__all__ = [
    "MAX_NEW_TOKENS",
    "NEEDLE",
    "PROMPT_STYLES",
    "Needle",
    "Trial",
    "needle_in_a_haystack",
    "positions_used",
    "prompt_style",
    "rouge1_recall",
]


@dataclass(frozen=True)
class Needle:
    """A needle sentence and the question that asks for it."""

    sentence: str
    question: str


NEEDLE = Needle(
    sentence="The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
    question="What is the best thing to do in San Francisco?",
)


@dataclass
class Trial:
    """One needle trial's outcome."""

    length: int
    depth: float
    recalled: bool
    answer: str
    recall: float
    span: tuple[int, int] = field(default=(0, 0))
    finite: bool = True  # False: some next-token logits were NaN or infinite (the answer is meaningless)


MAX_NEW_TOKENS = 32  # decode budget of a trial


def positions_used(length: int, max_new_tokens: int = MAX_NEW_TOKENS) -> int:
    """Positions a trial of a ``length``-token prompt reaches: the prompt and the decoded tokens fed back."""
    return length + max_new_tokens - 1


def rouge1_recall(reference: str, candidate: str, *, stemmer: bool = True) -> float:
    """ROUGE-1 recall of ``reference`` in ``candidate``, by the ``rouge-score`` package as the paper's code computes it.

    Words are lower-cased alphanumeric runs, counts clipped; ``stemmer`` Porter-stems words longer
    than 3 letters first (the paper's setting), so "sandwiches" recalls "sandwich".

    Example:
        >>> rouge1_recall("eat a sandwich", "eating sandwiches"), rouge1_recall("eat a sandwich", "eating sandwiches", stemmer=False)
        (0.6666666666666666, 0.0)
    """
    return _scorer(stemmer).score(reference, candidate)["rouge1"].recall


@functools.cache
def _scorer(stemmer: bool):
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk (~1.5 s): only when a trial is scored

    return RougeScorer(["rouge1"], use_stemmer=stemmer)


PROMPT_STYLES = ("chat", "few-shot")

_INSTRUCTION = "Based on the content of the text above, answer the question in one sentence."
_EXAMPLE = Needle(  # the worked example of the few-shot prompt: its answer quotes its text
    sentence="The oldest tree in the village is the chestnut that stands behind the mill.",
    question="What is the oldest tree in the village?",
)
_EXAMPLE_TEXT = f"The keeper's log says the storm lasted three days. {_EXAMPLE.sentence} The well was dug in the dry summer."


def prompt_style(tokenizer) -> str:
    """``"chat"`` when the tokenizer has a chat template (an instruct model), else ``"few-shot"``."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "few-shot"


def _prompt(tokenizer, context: str, question: str, style: str) -> str:
    """The trial's prompt text in ``style`` (see the module docstring)."""
    if style == "chat":
        user = f"{context}\n\n{_INSTRUCTION}\nQuestion: {question}"
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    shot = f"{_EXAMPLE_TEXT}\n\n{_INSTRUCTION}\nQuestion: {_EXAMPLE.question}\nAnswer: {_EXAMPLE.sentence}\n\n"
    return f"{shot}{context}\n\n{_INSTRUCTION}\nQuestion: {question}\nAnswer:"


def _check_style(tokenizer, style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown needle prompt style {style!r}: choose from {', '.join(PROMPT_STYLES)}")
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt='chat' needs a tokenizer with a chat template (an instruct model): use prompt='few-shot' for a base model")


def _needle_span(ids: list[int], needle_ids: list[int]) -> tuple[int, int]:
    """Where the needle's tokens sit in the prompt: the first window sharing ≥90% of its tokens."""
    want = set(needle_ids)
    n = len(needle_ids)
    for i in range(len(ids) - n + 1):
        if len(want & set(ids[i : i + n])) >= 0.9 * len(want):
            return i, i + n
    raise ValueError("the needle's tokens were not found in the prompt: the tokenizer split it differently in context")


def check_grid(lengths: Sequence[int], depths: Sequence[float]) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``lengths`` are positive ints and ``depths`` fractions in [0, 1].

    Example:
        >>> check_grid([512], [1.5])
        Traceback (most recent call last):
        ...
        ValueError: needle depths are fractions of the context in [0, 1] (0 = start, 1 = end), got depths=[1.5]
    """
    for name, xs in (("lengths", lengths), ("depths", depths)):
        if isinstance(xs, (str, bytes)) or not isinstance(xs, Iterable):
            raise TypeError(f"needle {name} must be a list of numbers, got {name}={xs!r}")
    lengths, depths = list(lengths), list(depths)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in lengths):
        raise TypeError(f"needle lengths are whole numbers of tokens (e.g. [512, 768]), got lengths={lengths!r}")
    if any(n < 1 for n in lengths):
        raise ValueError(f"needle lengths must be positive numbers of tokens (e.g. [512, 768]), got lengths={lengths!r}")
    if any(isinstance(d, bool) or not isinstance(d, numbers.Real) for d in depths):
        raise TypeError(f"needle depths are numbers in [0, 1] (e.g. [0.1, 0.5, 0.9]), got depths={depths!r}")
    if any(not 0 <= d <= 1 for d in depths):  # NaN fails too
        raise ValueError(f"needle depths are fractions of the context in [0, 1] (0 = start, 1 = end), got depths={depths!r}")


def needle_in_a_haystack(
    model,
    tokenizer,
    probe: Retrieval,
    *,
    haystack: str,
    lengths: Sequence[int] = (1024,),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    needle: Needle = NEEDLE,
    max_new_tokens: int = MAX_NEW_TOKENS,
    edits: Sequence[Edit] = (),
    prompt: str | None = None,
    stemmer: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Trial]:
    """Run needle trials with greedy decoding, feeding ``probe`` the decode steps.

    Args:
        lengths: prompt lengths in tokens (the haystack is cut so the whole prompt fits).
        depths: where the needle goes, as a fraction of the context (0 = start, 1 = end).
        max_new_tokens: decode budget; decoding stops at a newline or the end-of-sequence token.
        edits: attached to the prefill and every decode step, prepared on the prompt first
            (:func:`attnlab.runs.edit.prepare`: the unedited passes they ask for).
        prompt: ``"chat"`` or ``"few-shot"`` (default :func:`prompt_style`).
        stemmer: the recall criterion's stemmer (:func:`rouge1_recall`); False gives attnlab's
            earlier criterion (no stemming), which bench/repro/retrieval_heads_mask.py's recorded
            figures were measured with.
        progress: called with a line per trial.
    """
    check_grid(lengths, depths)
    style = prompt or prompt_style(tokenizer)
    _check_style(tokenizer, style)
    hay_ids = T.encode(tokenizer, haystack)
    needle_ids = T.encode(tokenizer, " " + needle.sentence)
    overhead = T.prompt(tokenizer, T.encode(tokenizer, _prompt(tokenizer, "", needle.question, style))).shape[1] + len(needle_ids) + 8
    trials = []
    eos = tokenizer.eos_token_id
    for length in lengths:
        budget = length - overhead
        if budget < 16 or budget > len(hay_ids):
            raise ValueError(f"needle trial length {length} needs between {overhead + 16} and {len(hay_ids) + overhead} tokens of prompt")
        for depth in depths:
            cut = hay_ids[:budget]
            at = int(depth * budget)
            before, after = tokenizer.decode(cut[:at]), tokenizer.decode(cut[at:])
            context = before.rstrip() + " " + needle.sentence + " " + after.lstrip()
            ids = T.prompt(tokenizer, T.encode(tokenizer, _prompt(tokenizer, context, needle.question, style)))  # [1, T]
            span = _needle_span(ids[0].tolist(), T.encode(tokenizer, needle.sentence))
            probe.start_trial(ids[0], span)
            prepare(model, edits, ids)
            generated, finite = _greedy(model, ids, probe, max_new_tokens, eos, tokenizer, edits)
            answer = tokenizer.decode(generated, skip_special_tokens=True).strip()
            recall = rouge1_recall(needle.sentence, answer, stemmer=stemmer)
            trial = Trial(int(ids.shape[1]), float(depth), recall > 0.5 and finite, answer, round(recall, 3), span, finite)
            probe.end_trial(trial.recalled, length=trial.length, depth=depth, recall=trial.recall, answer=answer)
            trials.append(trial)
            if progress:
                progress(f"needle at depth {depth:.0%} of {trial.length} tokens: recall {recall:.0%} — {answer[:60]!r}")
    return trials


@torch.no_grad()
def _greedy(
    model, ids: Tensor, probe: Retrieval, max_new_tokens: int, eos: int | None, tokenizer, edits: Sequence[Edit] = ()
) -> tuple[list[int], bool]:
    """Greedy decoding with a KV cache; the probe sees every decode step after the prefill.

    Returns the generated tokens and whether every step's next-token logits were finite (decoding
    stops at the first step that was not: its argmax means nothing).
    """
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers renamed it
    with attach(edits=list(edits)):
        out = model(input_ids=ids.to(input_device(model)), use_cache=True)
    cache = getattr(out, name)
    if not bool(torch.isfinite(out.logits[0, -1]).all()):
        return [], False
    token = int(out.logits[0, -1].argmax())
    generated = [token]
    for _ in range(max_new_tokens - 1):
        if token == eos or "\n" in tokenizer.decode([token]):
            break
        with attach(probes=[probe], edits=list(edits)):
            out = model(input_ids=torch.tensor([[token]], device=input_device(model)), use_cache=True, **{name: cache})
        cache = getattr(out, name)
        if not bool(torch.isfinite(out.logits[0, -1]).all()):
            return generated, False
        token = int(out.logits[0, -1].argmax())
        probe.step(token)
        generated.append(token)
    return generated, True
