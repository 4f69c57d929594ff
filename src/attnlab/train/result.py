"""A sweep's results as plain data: every run's curves, a per-mechanism table with 95% CIs, JSON and HTML.

The table's final test metric is the mean over seeds with a two-sided 95% t-interval
(:func:`attnlab.stats.mean_ci`): with 5 seeds the half-width is 2.78 standard errors. Curves
average the seeds at each evaluated step; a run that stopped early at its target keeps its last
value, so the mean curve does not jump when it stops.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from jinja2 import Environment

import attnlab
from attnlab.report.plots import Series, line_svg
from attnlab.scanner import _read_result, _write_atomic
from attnlab.stats import Estimate, mean_ci

__all__ = ["SCHEMA", "SweepResult", "versions"]

SCHEMA = "attnlab.sweep/1"


def versions() -> dict:
    """attnlab, torch and Python versions, and the machine, for provenance."""
    return {
        "attnlab": attnlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
    }


def _strict(x):
    """``x`` with every non-finite float replaced by None, for strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


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
class SweepResult:
    """Every run of a sweep (``runs``), a row per mechanism (``summary``), mean curves and settings (``meta``)."""

    meta: dict
    summary: list[dict]
    curves: dict
    runs: list[dict]

    @classmethod
    def from_runs(cls, runs: list[dict], meta: dict) -> SweepResult:
        """Aggregate runs (``{"mechanism", "seed", **TrainResult.to_dict()}``) per mechanism."""
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
        meta = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "target": target, **meta}
        return cls(meta, summary, curves, runs)

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

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as strict JSON (schema, versions, settings, every run); NaN is written as null."""
        return _write_atomic(Path(path), json.dumps(_strict(self.to_dict()), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SweepResult:
        """Read a result written by :meth:`save`; a ``ValueError`` says what is wrong with a bad file."""
        data = _read_result(Path(path), "sweep", SCHEMA)
        return cls(data["meta"], data["summary"], data["curves"], data["runs"])

    def report(self, path: str | os.PathLike) -> Path:
        """Write the self-contained HTML report (inline CSS and SVG, no scripts, no network)."""
        return _write_atomic(Path(path), self.html())

    def html(self) -> str:
        def series(key):
            return [Series(m, c[key]["steps"], c[key]["mean"], c[key]["low"], c[key]["high"]) for m, c in self.curves.items()]

        plots = [
            ("test metric (mean over seeds, 95% CI band)", line_svg(series("test_metric"), x_label="step", y_label="test metric")),
            ("training loss (mean over seeds, 95% CI band)", line_svg(series("train_loss"), x_label="step", y_label="train loss")),
        ]
        return Environment(autoescape=True).from_string(_TEMPLATE).render(r=self, header=self.HEADER, rows=self.rows(), plots=plots)


_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>attnlab bench: {{ r.meta.settings.task }}</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 9px;text-align:left}th{background:#f5f5f5}
svg text{font-size:10px;fill:#444}.meta{color:#666}figure{display:inline-block;margin:.5em 1.5em .5em 0;vertical-align:top}
figcaption{font-weight:600}pre{background:#f7f7f7;padding:.5em;overflow-x:auto}</style></head><body>
<h1>Task comparison: {{ r.meta.settings.task }}</h1>
<p class="meta">{{ r.meta.settings.mechanisms|length }} mechanisms × {{ r.meta.settings.seeds|length }} seeds · {{ r.meta.created }} ·
{{ r.meta.wall_s }} s · executor {{ r.meta.settings.executor }} ({{ r.meta.settings.workers }} workers) ·
attnlab {{ r.meta.versions.attnlab }}, torch {{ r.meta.versions.torch }} · {{ r.meta.versions.machine }}</p>
<table><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
<p>Final test metric: mean over seeds ± half-width of the two-sided 95% t-interval. Every mechanism saw the same batches for a
given seed, the same test set, and the same steps, batch size, learning rate and schedule.
{% if r.meta.target is not none %}Training stopped at the first evaluation whose test metric reached {{ r.meta.target }}; steps to
target average the runs that reached it.{% endif %}</p>
{% for title, svg in plots %}<figure><figcaption>{{ title }}</figcaption>{{ svg|safe }}</figure>{% endfor %}
<h2>Settings</h2><pre>{{ r.meta.settings|tojson(indent=1) }}</pre>
</body></html>
"""
