"""A sweep's results as plain data: every run's curves, a per-mechanism table with 95% CIs, JSON and HTML.

The table's final test metric is the mean over seeds with a two-sided 95% t-interval
(:func:`attnlab.stats.mean_ci`): with 5 seeds the half-width is 2.78 standard errors. Curves
average the seeds at each evaluated step; a run that stopped early at its target keeps its last
value, so the mean curve does not jump when it stops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

from attnlab.results import Result, _frame, _value, make_meta, model_meta
from attnlab.stats import Estimate, mean_ci

__all__ = ["SweepResult"]


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def _est(e: Estimate) -> dict:
    return {**asdict(e), "text": str(e)}


def _curve(runs: list[dict], key: str) -> dict:
    """Mean and 95% CI of ``key`` over runs at every evaluated step (an early-stopped run keeps its last value)."""
    steps = sorted({s for r in runs for s in r["steps"]})
    mean, low, high = [], [], []
    for s in steps:
        vals = []
        for r in runs:
            at = [v for t, v in zip(r["steps"], r[key]) if t <= s]
            if at:
                vals.append(at[-1])
        e = mean_ci(vals)
        mean.append(e.mean)
        low.append(e.low)
        high.append(e.high)
    return {"steps": steps, "mean": mean, "low": low, "high": high}


@dataclass
class SweepResult(Result):
    """Every run of a sweep (``runs``), a row per mechanism (``summary``), mean curves and settings (``meta``).

    Saved and loaded by :mod:`attnlab.results` (kind ``"sweep"``); ``meta.model`` names the tiny
    transformer and its options, ``meta.target`` the early-stopping target.
    """

    KIND: ClassVar[str] = "sweep"

    meta: dict
    summary: list[dict]
    curves: dict
    runs: list[dict]

    @classmethod
    def from_runs(cls, runs: list[dict], meta: dict) -> SweepResult:
        """Aggregate runs (``{"mechanism", "seed", **TrainResult.to_dict()}``) per mechanism.

        ``meta`` gives ``settings`` and ``wall_s`` (and ``started``, a ``time.time()``; default
        now − ``wall_s``); the meta block is built from them, and any other keys are kept.
        """
        mechanisms = list(dict.fromkeys(r["mechanism"] for r in runs))
        target = runs[0]["settings"].get("target") if runs else None
        summary, curves = [], {}
        for m in mechanisms:
            rs = [r for r in runs if r["mechanism"] == m]
            reached = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
            summary.append(
                {
                    "mechanism": m,
                    "parameters": rs[0]["settings"]["model"].get("parameters"),
                    "seeds": [r["seed"] for r in rs],
                    "final_metric": _est(mean_ci([r["final_metric"] for r in rs])),
                    "reached_target": None if target is None else f"{len(reached)}/{len(rs)}",
                    "steps_to_target": None if target is None else _est(mean_ci(reached)),
                    "wall_s": _est(mean_ci([r["wall_s"] for r in rs])),
                    "steps_per_s": _est(mean_ci([r["steps_per_s"] for r in rs])),
                }
            )
            curves[m] = {"test_metric": _curve(rs, "test_metric"), "train_loss": _curve(rs, "train_loss")}
        settings, extra = meta["settings"], {k: v for k, v in meta.items() if k not in ("settings", "wall_s", "started")}
        full = make_meta(
            "sweep",
            settings=settings,
            wall_s=meta["wall_s"],
            started=meta.get("started"),
            model=model_meta(identity="TinyTransformer", options=settings.get("model_options")),
            target=target,
        )
        return cls({**full, **extra}, summary, curves, runs)

    def rows(self) -> list[tuple[str, ...]]:
        """The table as text cells: mechanism, parameters, final metric (mean ± CI half-width, [low, high]), target, time."""
        out = []
        for s in self.summary:
            f = s["final_metric"]
            ci = f"[{_num(f['low'])}, {_num(f['high'])}]" if f["n"] >= 2 else "(one seed)"
            to = s["steps_to_target"]
            reach = "" if s["reached_target"] is None else f"{s['reached_target']}: {to['text'] if to['n'] else '—'}"
            out.append((s["mechanism"], f"{s['parameters']:,}", f["text"], ci, reach, s["wall_s"]["text"], _num(s["steps_per_s"]["mean"])))
        return out

    HEADER = ("mechanism", "params", "final metric", "95% CI", "target: steps", "wall s", "steps/s")

    def table(self) -> str:
        """The table as Markdown."""
        lines = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in self.rows())])

    def to_pandas(self):
        """One row per (run, scalar): ``mechanism, seed, metric, value``; metrics are ``final_metric``,
        ``steps_to_target`` (NaN if never reached), ``steps_done``, ``wall_s`` and ``steps_per_s``."""
        rows = [(r["mechanism"], r["seed"], k, _value(r.get(k))) for r in self.runs for k in _RUN_METRICS]
        return _frame(rows, ["mechanism", "seed", "metric", "value"])

    def page(self):
        """The report: the table and the mean curves (:mod:`attnlab.report.sweep`), titled for one run or a comparison."""
        from attnlab.report.sweep import build

        return build(self)


_RUN_METRICS = ("final_metric", "steps_to_target", "steps_done", "wall_s", "steps_per_s")
