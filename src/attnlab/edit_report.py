"""``attnlab edit``: run edits on a model, measure before/after, keep results and an HTML report."""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment

from attnlab.evaluate import compare
from attnlab.report.html import bars_svg
from attnlab.scanner import _versions, _write_atomic

__all__ = ["EditResult", "run_edit"]

SCHEMA = 1


@dataclass
class EditResult:
    """Edits and their measured effect: settings and versions in ``meta``, per-example values in ``examples``."""

    meta: dict
    examples: dict[str, dict[str, list[float]]]

    def save(self, path: str | os.PathLike) -> Path:
        return _write_atomic(Path(path), json.dumps(asdict(self), indent=1))

    def report(self, path: str | os.PathLike) -> Path:
        return _write_atomic(Path(path), render(self))


def run_edit(
    model,
    tokenizer,
    edits: Sequence,
    evals: Sequence[str],
    *,
    specs_text: Sequence[str] = (),
    model_name: str = "",
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> EditResult:
    """Instrument ``model``, check the edits against its sites, and measure ``evals`` without and with them."""
    from attnlab.models import hf

    t0 = time.perf_counter()
    hf.instrument(model, backend=backend)
    sites = hf.sites(model)
    for e in edits:
        if hasattr(e, "validate"):
            e.validate(sites)
        _calibrate(e, model, tokenizer, progress)
    try:
        results = compare(model, tokenizer, edits, evals, progress=progress)
    finally:
        for e in edits:
            if hasattr(e, "close"):
                e.close()
    meta = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "model": {
            "name": model_name,
            "identity": getattr(model, "attnlab_identity", type(model).__name__),
            "layers": len(sites),
            "heads": sites[0].num_heads,
        },
        "edits": list(specs_text) or [repr(e) for e in edits],
        "applied": [repr(e) for e in edits],  # after calibration: the layers and heads each edit chose
        "composition": "stages run logits → probs → output; within a stage, edits act in the order given",
        "evals": list(evals),
        "backend": backend,
        "metrics": [r.summary() for r in results],
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    return EditResult(meta, {r.name: {"before": r.before, "after": r.after} for r in results})


def _calibrate(edit, model, tokenizer, progress) -> None:
    """Calibrate an edit that needs it before measuring (held-out text: the sonnets).

    An edit opts out with ``needs_calibration = False``; ``calibrate(model, tokenizer)`` is called
    as is, or with ``texts`` when its signature asks for them.
    """
    if not hasattr(edit, "calibrate") or not getattr(edit, "needs_calibration", True):
        return
    if progress:
        progress(f"calibrating {getattr(edit, 'name', type(edit).__name__)}")
    params = inspect.signature(edit.calibrate).parameters
    if "texts" in params and params["texts"].default is inspect.Parameter.empty:
        from attnlab.data import text

        sonnets = text("sonnets")
        edit.calibrate(model, tokenizer, [sonnets[i : i + 2000] for i in range(0, 8000, 2000)])
    else:
        edit.calibrate(model, tokenizer)


_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>attnlab edit: {{ meta.model.identity }}</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 9px;text-align:left}th{background:#f5f5f5}
svg text{font-size:10px;fill:#444}.meta{color:#666}figure{display:inline-block;margin:.5em 1.5em .5em 0}</style></head><body>
<h1>Edit: {{ meta.edits|join(" then ") }}</h1>
<p class="meta">{{ meta.model.identity }} · {{ meta.model.layers }} layers · {{ meta.created }} · {{ meta.wall_s }} s ·
attnlab {{ meta.versions.attnlab }}, torch {{ meta.versions.torch }} · {{ meta.composition }}</p>
{% if meta.applied %}<p class="meta">As applied (after calibration): {{ meta.applied|join("; ") }}</p>{% endif %}
<table><tr><th>metric</th><th>before</th><th>after</th><th>after − before</th><th>95% CI</th><th>examples</th><th>better is</th></tr>
{% for m in meta.metrics %}<tr><td>{{ m.metric }}</td><td>{{ "%.4g"|format(m.before) }}</td><td>{{ "%.4g"|format(m.after) }}</td>
<td>{{ "%+.4g"|format(m.difference) }}</td><td>[{{ "%+.3g"|format(m.ci95[0]) }}, {{ "%+.3g"|format(m.ci95[1]) }}]</td><td>{{ m.examples }}</td>
<td>{{ "higher" if m.higher_is_better else "lower" }}</td></tr>{% endfor %}</table>
<h2>Per example: after − before</h2>
{% for name, svg in plots %}<figure><figcaption>{{ name }}</figcaption>{{ svg|safe }}</figure>{% endfor %}
</body></html>
"""


def render(result: EditResult) -> str:
    """The self-contained HTML report of an edit (no scripts, no network)."""
    plots = [(name, bars_svg([a - b for a, b in zip(v["after"], v["before"])], label="example")) for name, v in result.examples.items()]
    return Environment(autoescape=True).from_string(_TEMPLATE).render(meta=result.meta, plots=plots)
