"""Measure what an edit does: before/after on the same examples, with paired differences.

Four measurements, each giving one number per example so that before and after pair up
(:class:`Scores`), each declared in :data:`METRICS` with the model kinds it applies to:

- :func:`perplexity` (decoders): rolling perplexity of a shipped text (The Tempest), windows with
  context as lm-evaluation-harness's ``loglikelihood_rolling`` computes it, one value per window,
  the token-level NLL kept;
- :func:`needle` (decoders): needle-in-a-haystack recall (1 if the answer recalls the needle) per
  trial, with a prompt that fits the model (chat template or few-shot);
- :func:`logit_difference` (decoders): on indirect-object templates ("When Mary and John went to
  the store, John gave a drink to"), logit of the right name minus the wrong one;
- :func:`passage_match` (encoders and decoders): the octave of a sonnet finds its own sestet by
  the cosine of mean-pooled final hidden states; the margin over the best other sestet.

Every input starts as the model's tokenizer starts a sequence (:mod:`attnlab.data.tokens`: BOS
when it adds one, nothing otherwise). :func:`compare` runs the measurements without and with the
edits and reports each metric's means and the mean paired difference with its 95% confidence
interval (:func:`attnlab.stats.mean_ci`). Edits are attached with :func:`attnlab.attach` around each
forward pass, after the unedited passes they ask for on that input (:func:`attnlab.runs.edit.prepare`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from attnlab.core import attach
from attnlab.data import tokens as T
from attnlab.models.hf_load import input_device
from attnlab.runs._checks import check_finite
from attnlab.runs.edit import prepare
from attnlab.stats import Estimate, mean_ci

__all__ = [
    "METRICS",
    "Metric",
    "MetricResult",
    "Scores",
    "compare",
    "input_tokens",
    "ioi_prompts",
    "logit_difference",
    "needle",
    "passage_match",
    "perplexity",
]


@dataclass
class Scores:
    """One number per example, what each stands on, and what the measurement kept besides.

    ``weights``: the tokens each example scored (perplexity windows), else None. ``detail``:
    JSON-ready extras kept in the results (token-level NLL, the prompt style used).
    """

    values: list[float]
    weights: list[int] | None = None
    detail: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self):
        return iter(self.values)

    def __getitem__(self, i):
        return self.values[i]


@dataclass
class MetricResult:
    """One metric before and after an edit, per example."""

    name: str
    before: list[float]
    after: list[float]
    higher_is_better: bool
    weights: list[int] | None = None  # tokens per example, when examples score tokens
    detail: dict = field(default_factory=dict)  # {"before": ..., "after": ...} extras of each side

    @property
    def difference(self) -> Estimate:
        """Mean of ``after − before`` over the examples, with its 95% confidence interval."""
        return mean_ci([a - b for a, b in zip(self.after, self.before)])

    def summary(self) -> dict:
        d = self.difference
        out = {
            "metric": self.name,
            "before": round(sum(self.before) / len(self.before), 4),
            "after": round(sum(self.after) / len(self.after), 4),
            "difference": round(d.mean, 4),
            "ci95": [round(d.low, 4), round(d.high, 4)],
            "examples": len(self.before),
            "higher_is_better": self.higher_is_better,
        }
        if self.weights is not None:  # perplexity: the corpus value over every scored token too
            n = sum(self.weights)
            pooled = [math.exp(sum(w * math.log(v) for w, v in zip(self.weights, side)) / n) for side in (self.before, self.after)]
            out |= {"tokens": n, "pooled_before": round(pooled[0], 4), "pooled_after": round(pooled[1], 4)}
        return out


def _forward(model, ids: torch.Tensor, edits: Sequence) -> torch.Tensor:
    prepare(model, edits, ids)
    with torch.no_grad(), attach(edits=list(edits)):
        return model(input_ids=ids.to(input_device(model))).logits.cpu()


def perplexity(
    model,
    tokenizer,
    edits: Sequence = (),
    *,
    text: str = "tempest",
    tokens: int | None = 2048,
    window: int = 256,
    stride: int | None = None,
    prefix_token: int | str | None = None,
    progress: Callable | None = None,
) -> Scores:
    """Rolling perplexity of ``text``, one value per window (lm-eval's ``loglikelihood_rolling``).

    The text is encoded once, its first ``tokens`` tokens kept, and scored by
    :func:`attnlab.data.tokens.rolling_windows`: every window starts as the tokenizer starts a
    sequence, each later window scores ``stride`` new tokens with the tokens before them as context,
    so a scored token sees ``window − stride`` to ``window − 1`` positions of context.

    Args:
        text: a shipped text's name (``tempest``, ``sonnets``, ``lucrece``) or raw text.
        tokens: how many of the text's tokens to score (None: all of them).
        window: positions of one forward pass (start tokens included).
        stride: new tokens scored per window after the first (None: half the window, so every scored
            token sees at least ``window / 2`` positions of context; lm-eval uses ``window`` only).
        prefix_token: a token before the text in the first window, for tokenizers that add no start
            token (the text's first token is then scored too); ``"lm-eval"``: lm-evaluation-harness's
            choice (the tokenizer's BOS if it declares one, else its EOS). With ``stride=window`` this
            is lm-eval's ``loglikelihood_rolling`` (``bench/lm_eval_agreement.py``); default none.

    Returns:
        :class:`Scores`: per-window perplexity, the tokens each window scored (``weights``), and in
        ``detail`` the token-level NLL (``token_nll``, in nats) and the settings.
    """
    from attnlab.data import TEXTS
    from attnlab.data import text as shipped

    ids = T.encode(tokenizer, shipped(text) if text in TEXTS else text)
    if tokens is not None:
        if len(ids) < tokens:
            raise ValueError(f"the text has {len(ids)} tokens, fewer than tokens={tokens}: give a longer text or fewer tokens")
        ids = ids[:tokens]
    stride = window // 2 if stride is None else stride
    if prefix_token == "lm-eval":
        prefix_token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    elif isinstance(prefix_token, str):
        raise ValueError(f"prefix_token is a token id, 'lm-eval' or None, got {prefix_token!r}")
    windows = T.rolling_windows(ids, T.start_tokens(tokenizer), window=window, stride=stride, prefix_token=prefix_token)
    values, weights, nll = [], [], []
    for i, w in enumerate(windows):
        logits = _forward(model, w.input_ids, edits)[0, w.logits_from : w.logits_from + len(w.targets)]  # [n, V]
        token_nll = torch.nn.functional.cross_entropy(logits.float(), w.targets, reduction="none")  # [n]
        values.append(float(torch.exp(token_nll.mean())))
        weights.append(len(w.targets))
        nll += token_nll.tolist()
        if progress:
            progress(f"perplexity window {i + 1}/{len(windows)}")
    settings = {"text": text if text in TEXTS else "custom", "tokens": len(ids), "window": window, "stride": stride}
    return Scores(values, weights, {"token_nll": [round(x, 5) for x in nll], **settings, "prefix_token": prefix_token})


def needle(
    model,
    tokenizer,
    edits: Sequence = (),
    *,
    lengths: Sequence[int] = (512, 768),
    depths: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    prompt: str | None = None,
    progress: Callable | None = None,
) -> Scores:
    """Needle recall per trial (1.0 if ROUGE-1 recall of the needle sentence > 50%, else 0.0; NaN when the logits were not finite).

    Args:
        prompt: ``"chat"`` or ``"few-shot"`` (default: chat when the tokenizer has a chat
            template, else few-shot; :func:`attnlab.runs.needle.prompt_style`). ``detail`` records it.
    """
    from attnlab.data import haystack
    from attnlab.probes.retrieval import Retrieval
    from attnlab.runs.needle import needle_in_a_haystack, prompt_style

    style = prompt or prompt_style(tokenizer)
    trials = needle_in_a_haystack(
        model, tokenizer, Retrieval(), haystack=haystack(), lengths=lengths, depths=depths, edits=edits, prompt=style, progress=progress
    )
    values = [float(t.recalled) if t.finite else float("nan") for t in trials]
    return Scores(values, detail={"prompt": style, "answers": [t.answer for t in trials]})


_NAMES = ("Mary", "John", "Alice", "Bob", "Emma", "James", "Sarah", "David", "Laura", "Tom")
_PLACES = ("store", "park", "station", "market", "garden")
_OBJECTS = ("drink", "book", "letter", "ring", "ticket")


def ioi_prompts(n: int = 20, seed: int = 0) -> list[tuple[str, str, str]]:
    """``(prompt, right, wrong)`` indirect-object prompts: the answer is the name not repeated."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, b = (_NAMES[i] for i in torch.randperm(len(_NAMES), generator=g)[:2].tolist())
        place = _PLACES[int(torch.randint(len(_PLACES), (1,), generator=g))]
        obj = _OBJECTS[int(torch.randint(len(_OBJECTS), (1,), generator=g))]
        out.append((f"When {a} and {b} went to the {place}, {b} gave a {obj} to", f" {a}", f" {b}"))
    return out


def logit_difference(model, tokenizer, edits: Sequence = (), *, n: int = 20, progress: Callable | None = None) -> Scores:
    """Per prompt: logit of the right name minus the wrong name at the last position (IOI templates)."""
    out = []
    for i, (prompt, right, wrong) in enumerate(ioi_prompts(n)):
        ids = T.prompt(tokenizer, T.encode(tokenizer, prompt))
        r, w = (T.encode(tokenizer, x)[0] for x in (right, wrong))
        logits = _forward(model, ids, edits)[0, -1]
        out.append(float(logits[r] - logits[w]))
        if progress:
            progress(f"logit difference {i + 1}/{n}")
    return Scores(out)


def sonnet_halves(first: int = 100, n: int = 24) -> list[tuple[str, str]]:
    """``(octave, sestet)`` of Shakespeare's sonnets ``first .. first + n − 1``: lines 1–8 and 9–14.

    Sonnets 100 on are held out from the calibrations that read the sonnets (mean ablation reads
    the first 8,000 characters, about sonnets 1–15).
    """
    from attnlab.data import text

    pieces = re.split(r"\n\s*[IVXLC]+\s*\n", text("sonnets"))[1:]  # [0] is the title
    out = []
    for piece in pieces[first - 1 : first - 1 + n]:
        lines = [x.strip() for x in piece.strip().splitlines() if x.strip()]
        out.append((" ".join(lines[:8]), " ".join(lines[8:])))
    if len(out) < n:
        raise ValueError(f"the sonnets hold {len(pieces)} poems, fewer than first + n − 1 = {first + n - 1}")
    return out


def _embedding(model, ids: torch.Tensor, edits: Sequence) -> torch.Tensor:
    """Mean of the final hidden states over the sequence ``[C]`` (sentence-transformers' mean pooling)."""
    prepare(model, edits, ids)
    with torch.no_grad(), attach(edits=list(edits)):
        out = model(input_ids=ids.to(input_device(model)), output_hidden_states=True)
    return out.hidden_states[-1][0].float().mean(0).cpu()


def passage_match(model, tokenizer, edits: Sequence = (), *, first: int = 100, n: int = 24, progress: Callable | None = None) -> Scores:
    """Per sonnet: cosine of its octave with its own sestet minus the best cosine with another sestet.

    Embeddings are the mean of the final hidden states (sentence-transformers' pooling), each
    half a whole sequence (:func:`attnlab.data.tokens.sequence`). A positive margin means the
    octave finds its sestet; ``detail["recall_at_1"]`` counts how often.
    """
    halves = sonnet_halves(first, n)
    emb = []
    for i, pair in enumerate(halves):
        emb.append([_embedding(model, T.sequence(tokenizer, T.encode(tokenizer, x)), edits) for x in pair])
        if progress:
            progress(f"passage match {i + 1}/{n}")
    q = torch.nn.functional.normalize(torch.stack([a for a, _ in emb]), dim=-1)  # [n, C]
    d = torch.nn.functional.normalize(torch.stack([b for _, b in emb]), dim=-1)  # [n, C]
    sim = q @ d.T  # [n, n]
    own = sim.diagonal()
    other = sim.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf")).amax(-1)
    margin = (own - other).tolist()
    return Scores(margin, detail={"recall_at_1": sum(m > 0 for m in margin) / n, "sonnets": [first, first + n - 1]})


@dataclass(frozen=True)
class Metric:
    """An evaluation :func:`compare` can run: ``fn(model, tokenizer, edits, *, progress, **options) -> Scores``."""

    fn: Callable[..., Scores]
    higher_is_better: bool
    what: str  # what a value is, for messages
    unit: str  # what one example is, plural
    kinds: frozenset[str]  # model kinds it applies to: "decoder" (a causal LM), "encoder"
    needs: str  # why it applies only there, for the line that says it was skipped


_DECODERS = frozenset({"decoder"})
METRICS: dict[str, Metric] = {
    "ppl": Metric(perplexity, False, "perplexity", "windows", _DECODERS, "scores next-token logits"),
    "needle": Metric(needle, True, "needle recall", "trials", _DECODERS, "decodes an answer greedily"),
    "logit_diff": Metric(logit_difference, True, "logit difference", "prompts", _DECODERS, "reads next-token logits"),
    "match": Metric(passage_match, True, "passage-match margin", "sonnets", frozenset({"decoder", "encoder"}), "reads hidden states"),
}
"""The evaluations by name; ``attnlab edit --eval`` takes these."""

DEFAULT_EVALS = {"decoder": ("ppl", "needle"), "encoder": ("match",)}
"""What ``attnlab edit`` measures when ``--eval`` is not given, per model kind."""


def input_tokens(name: str, tokenizer, **options) -> int:
    """The most positions one input of evaluation ``name`` reaches (with ``options`` as :func:`compare` passes them).

    ``ppl``: the window; ``needle``: the longest prompt and its decoded tokens; ``logit_diff``: the
    longest prompt; ``match``: the longest half-sonnet.
    """
    import inspect

    from attnlab.runs.needle import positions_used

    fn = METRICS[name].fn
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}
    kw = {**defaults, **options}
    if name == "ppl":
        return int(kw["window"])
    if name == "needle":
        return max((positions_used(int(n)) for n in kw["lengths"]), default=0)
    if name == "logit_diff":
        return max(T.prompt(tokenizer, T.encode(tokenizer, p)).shape[1] for p, _, _ in ioi_prompts(kw["n"]))
    return max(T.sequence(tokenizer, T.encode(tokenizer, x)).shape[1] for pair in sonnet_halves(kw["first"], kw["n"]) for x in pair)


def _stage(progress: Callable | None, stage: str) -> Callable | None:
    """``progress`` with each line saying which pass it is: ``"before: perplexity window 1/8"``."""
    return None if progress is None else lambda line: progress(f"{stage}: {line}")


def compare(
    model,
    tokenizer,
    edits: Sequence,
    evals: Sequence[str] = ("ppl", "needle"),
    *,
    progress: Callable | None = None,
    options: dict | None = None,
    names: Sequence[str] = (),
) -> list[MetricResult]:
    """Each metric without and with ``edits``, paired per example.

    Args:
        evals: metric names: ``ppl``, ``needle``, ``logit_diff``, ``match``.
        options: per-metric keyword arguments, e.g. ``{"needle": {"lengths": [1024]}}``.
        names: how to call the edits in messages (their specs); default: their reprs.
        progress: called with a line per example, starting ``before:`` (the unedited model) or
            ``after:`` (with the edits).

    Raises:
        NonFiniteError: (a ``ValueError``) a metric is NaN or infinite on some example, before the
            edits (the model's outputs are broken) or after them (the edits break them); it names
            the metric, the edits and how many examples.
    """
    if isinstance(evals, str):
        raise TypeError(f"evals is a list of evaluation names (e.g. ['ppl', 'needle']), got evals={evals!r}")
    unknown = [e for e in evals if e not in METRICS]
    if unknown:
        raise ValueError(f"unknown evaluation {unknown[0]!r}: choose from {', '.join(METRICS)}")
    label = ", ".join(names) or ", ".join(repr(e) for e in edits) or "no edit"
    results = []
    for name in evals:
        m = METRICS[name]
        kw = (options or {}).get(name, {})
        before = m.fn(model, tokenizer, (), progress=_stage(progress, "before"), **kw)
        check_finite(
            before.values, f"{m.what} of the unedited model", m.unit, "the model's own outputs are not finite: check its weights and dtype"
        )
        after = m.fn(model, tokenizer, edits, progress=_stage(progress, "after"), **kw)
        check_finite(after.values, f"{m.what} after {label}", m.unit, "the edit breaks the model's outputs: choose milder settings")
        detail = {"before": before.detail, "after": after.detail} if before.detail else {}
        results.append(MetricResult(name, before.values, after.values, m.higher_is_better, before.weights, detail))
    return results
