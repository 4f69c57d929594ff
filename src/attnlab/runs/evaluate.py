"""Measure what an edit does: before/after on the same examples, with paired differences.

Three measurements, each returning one number per example so that before and after pair up:

- :func:`perplexity`: per-window perplexity of text shipped with attnlab (The Tempest);
- :func:`needle`: needle-in-a-haystack recall (1 if the answer recalls the needle) per trial;
- :func:`logit_difference`: on indirect-object templates ("When Mary and John went to the
  store, John gave a drink to"), logit of the right name minus the wrong one.

:func:`compare` runs them without and with the edits and reports each metric's means and the
mean paired difference with its 95% confidence interval (:func:`attnlab.stats.mean_ci`).
Edits are attached with :func:`attnlab.attach` around each forward pass, after the unedited
passes they ask for on that input (:func:`attnlab.runs.edit.prepare`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from attnlab.core import attach
from attnlab.models.hf_load import input_device
from attnlab.runs._checks import check_finite
from attnlab.runs.edit import prepare
from attnlab.stats import Estimate, mean_ci

__all__ = ["METRICS", "MetricResult", "compare", "input_tokens", "ioi_prompts", "logit_difference", "needle", "perplexity"]


@dataclass
class MetricResult:
    """One metric before and after an edit, per example."""

    name: str
    before: list[float]
    after: list[float]
    higher_is_better: bool

    @property
    def difference(self) -> Estimate:
        """Mean of ``after − before`` over the examples, with its 95% confidence interval."""
        return mean_ci([a - b for a, b in zip(self.after, self.before)])

    def summary(self) -> dict:
        d = self.difference
        return {
            "metric": self.name,
            "before": round(sum(self.before) / len(self.before), 4),
            "after": round(sum(self.after) / len(self.after), 4),
            "difference": round(d.mean, 4),
            "ci95": [round(d.low, 4), round(d.high, 4)],
            "examples": len(self.before),
            "higher_is_better": self.higher_is_better,
        }


def _forward(model, ids: torch.Tensor, edits: Sequence) -> torch.Tensor:
    prepare(model, edits, ids)
    with torch.no_grad(), attach(edits=list(edits)):
        return model(input_ids=ids.to(input_device(model))).logits.cpu()


def perplexity(
    model, tokenizer, edits: Sequence = (), *, windows: int = 8, window: int = 256, progress: Callable | None = None
) -> list[float]:
    """Per-window perplexity of consecutive windows of The Tempest (shipped with attnlab)."""
    from attnlab.data import sample_text

    ids = tokenizer(sample_text(), return_tensors="pt")["input_ids"][0]
    if ids.numel() < windows * window + 1:
        raise ValueError(f"the sample text has {ids.numel()} tokens, fewer than windows × window = {windows * window}")
    out = []
    for w in range(windows):
        chunk = ids[w * window : (w + 1) * window + 1][None]  # [1, window + 1]
        logits = _forward(model, chunk[:, :-1], edits)
        nll = torch.nn.functional.cross_entropy(logits[0].float(), chunk[0, 1:])
        out.append(float(torch.exp(nll)))
        if progress:
            progress(f"perplexity window {w + 1}/{windows}")
    return out


def needle(
    model,
    tokenizer,
    edits: Sequence = (),
    *,
    lengths: Sequence[int] = (512, 768),
    depths: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    progress: Callable | None = None,
) -> list[float]:
    """Needle recall per trial (1.0 if ROUGE-1 recall of the needle sentence > 50%, else 0.0; NaN when the logits were not finite)."""
    from attnlab.data import haystack
    from attnlab.probes.retrieval import Retrieval
    from attnlab.runs.needle import needle_in_a_haystack

    trials = needle_in_a_haystack(
        model, tokenizer, Retrieval(), haystack=haystack(), lengths=lengths, depths=depths, edits=edits, progress=progress
    )
    return [float(t.recalled) if t.finite else float("nan") for t in trials]


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


def logit_difference(model, tokenizer, edits: Sequence = (), *, n: int = 20, progress: Callable | None = None) -> list[float]:
    """Per prompt: logit of the right name minus the wrong name at the last position (IOI templates)."""
    out = []
    for i, (prompt, right, wrong) in enumerate(ioi_prompts(n)):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        r, w = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in (right, wrong))
        logits = _forward(model, ids, edits)[0, -1]
        out.append(float(logits[r] - logits[w]))
        if progress:
            progress(f"logit difference {i + 1}/{n}")
    return out


METRICS: dict[str, tuple[Callable, bool]] = {
    "ppl": (perplexity, False),
    "needle": (needle, True),
    "logit_diff": (logit_difference, True),
}
_UNITS = {"ppl": ("perplexity", "windows"), "needle": ("needle recall", "trials"), "logit_diff": ("logit difference", "prompts")}


def input_tokens(name: str, tokenizer, **options) -> int:
    """The most positions one input of evaluation ``name`` reaches (with ``options`` as :func:`compare` passes them).

    ``ppl``: the window; ``needle``: the longest prompt and its decoded tokens; ``logit_diff``: the
    longest prompt.
    """
    import inspect

    from attnlab.runs.needle import positions_used

    fn = METRICS[name][0]
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}
    kw = {**defaults, **options}
    if name == "ppl":
        return int(kw["window"])
    if name == "needle":
        return max((positions_used(int(n)) for n in kw["lengths"]), default=0)
    return max(len(tokenizer(p)["input_ids"]) for p, _, _ in ioi_prompts(kw["n"]))


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
        evals: metric names: ``ppl``, ``needle``, ``logit_diff``.
        options: per-metric keyword arguments, e.g. ``{"needle": {"lengths": [1024]}}``.
        names: how to call the edits in messages (their specs); default: their reprs.

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
        fn, higher = METRICS[name]
        what, unit = _UNITS[name]
        kw = (options or {}).get(name, {})
        before = fn(model, tokenizer, (), progress=progress, **kw)
        check_finite(before, f"{what} of the unedited model", unit, "the model's own outputs are not finite: check its weights and dtype")
        after = fn(model, tokenizer, edits, progress=progress, **kw)
        check_finite(after, f"{what} after {label}", unit, "the edit breaks the model's outputs: choose milder settings")
        results.append(MetricResult(name, before, after, higher))
    return results
