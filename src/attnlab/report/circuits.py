"""A circuit result's report: the method's grid as a diverging heatmap, the top components in words, the pairs and settings.

Paper: 5 (Circuit component reuse) and 57 (Circuit analysis at scale).

One page per method (:mod:`attnlab.circuits`): activation patching (``patch``) and attribution
patching (``attrib``) draw the layer × head (or layer × position) grid of normalised scores,
attribution patching with its agreement with activation patching; path patching (``path``) the
senders × receivers grid; direct logit attribution (``dla``) each head's term, the terms per
layer, and their sum against the model's logit difference. Scores and terms are signed, so every
heatmap is drawn on a blue–orange scale centred at 0.
"""

from __future__ import annotations

import math
import re

from attnlab.report import figures
from attnlab.report.page import Report, Table, Text
from attnlab.report.scan import weights_line

__all__ = ["RESTORED", "build", "render"]

RESTORED = "fraction of the clean−corrupted logit difference restored"
TOP_K = 10

# method -> (title, what a grid value means)
METHODS = {
    "patch": ("activation patching", f"{RESTORED} when this unit is taken from the clean run (1: all of it, 0: none)"),
    "attrib": ("attribution patching", f"first-order estimate of the {RESTORED} when this unit is taken from the clean run"),
    "path": ("path patching", f"{RESTORED} when only this sender's path into the receiver comes from the clean run"),
    "dla": ("direct logit attribution", "this head's direct share of logit[answer] − logit[wrong] (clean prompts, last position)"),
}


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _fmt(v) -> str:
    return f"{v:.4g}" if _finite(v) else "not measured"


def _labels(result) -> tuple[list, list]:
    """The grid's row and column labels: layers as numbers, heads and positions as numbers, senders and receivers as names."""
    rows = [int(m.group(1)) if (m := re.match(r"layers\.(\d+)", r)) else r for r in result.grid_rows]
    width = max((len(r) for r in result.grid), default=0)
    receivers = result.meta["settings"].get("receivers")
    columns = list(receivers) if result.grid_axes[1] == "receiver" and isinstance(receivers, list) else list(range(width))
    return rows, columns


def _top(result, rows: list, columns: list, k: int = TOP_K) -> list[str]:
    """The ``k`` grid cells of the largest magnitude, in words."""
    y, x = result.grid_axes
    cells = [(v, rows[i], columns[j]) for i, row in enumerate(result.grid) for j, v in enumerate(row) if _finite(v)]
    cells.sort(key=lambda c: -abs(c[0]))
    return [f"{y} {r}, {x} {c}: {v:+.3g}" for v, r, c in cells[:k]]


def _grid_figure(result, name: str, title: str, meaning: str, unit: str, domain: float | None, caption: str = "") -> figures.Figure:
    rows, columns = _labels(result)
    y, x = result.grid_axes
    values = [v for row in result.grid for v in row if _finite(v)]
    top = max([abs(v) for v in values] + [domain or 1e-12])
    return figures.heatmap(
        name, title, result.grid, meaning=meaning, unit=unit, domain=(-top, top), label=unit, axes=(y, x), caption=caption,
        rows=rows if y != "layer" else None, columns=columns if x == "receiver" else None, diverging=True,
    )  # fmt: skip


def _summary(result, method: str) -> list[str]:
    s = result.meta.get("summary", {})
    if method == "dla":
        ld, total = s.get("logit_diff"), s.get("terms_sum")
        gap = abs(total - ld) if _finite(ld) and _finite(total) else math.nan
        return [
            f"logit[answer] − logit[wrong] of the model, mean over pairs: {_fmt(ld)}",
            f"sum of every term (embedding, heads, output biases, MLPs, final norm and unembedding biases): {_fmt(total)} "
            f"(differs by {_fmt(gap)})",
        ]
    return [
        f"logit difference on the clean prompts: {_fmt(s.get('clean'))}; on the corrupted prompts: {_fmt(s.get('corrupted'))}",
        "score = (patched − corrupted) ÷ (clean − corrupted) of the mean logit difference: 1 restores the clean answer, 0 does nothing, "
        "a negative score pushes towards the wrong answer",
    ]


def _dla_terms(result) -> list[dict]:
    """The terms summed per layer and kind, in the order of the residual stream: embedding, each layer's attention and MLP, biases."""
    out: dict[str, float] = {}
    for row in result.table:
        kind, layer = row["kind"], row["layer"]
        key = {"head": f"L{layer} attn", "attn_bias": f"L{layer} attn", "mlp": f"L{layer} mlp"}.get(kind, row["term"])
        out[key] = out.get(key, 0.0) + (row["value"] if _finite(row["value"]) else math.nan)
    return [{"term": k, "value": v} for k, v in out.items()]


def _provenance(meta: dict) -> list[str]:
    m, v = meta["model"], meta["versions"]
    line = f"{m['identity']} · {meta['created']} · {meta['wall_s']} s · attnlab {v['attnlab']}, torch {v['torch']}"
    return [line + (f", transformers {v['transformers']}" if v.get("transformers") else ""), *weights_line(m)]


def build(result) -> Report:
    """The :class:`~attnlab.report.page.Report` of an :class:`attnlab.results.CircuitResult`."""
    meta, settings = result.meta, result.meta["settings"]
    method = settings["method"]
    name, meaning = METHODS[method]
    source = settings.get("task") or settings.get("prompts") or "prompt pairs"
    r = Report(f"Circuit: {name} on {source} ({settings['pairs']} pairs)", _provenance(meta))
    s = r.section("Summary", "summary").add(Text(items=_summary(result, method)))
    rows, columns = _labels(result)
    y, x = result.grid_axes
    if method == "dla":
        s.add(Text(f"Top {TOP_K} heads by the size of their term (logit difference):"), Text(items=_top(result, rows, columns)))
        sec = r.section("Direct logit attribution", "grid")
        sec.add(_grid_figure(result, "dla.heads", "each head's term (layer × head)", meaning, "logit difference", None))
        sec.add(
            figures.bars(
                "dla.terms", "terms per layer (heads and output bias as attn)", _dla_terms(result), x="term", x_title="term",
                y_title="logit difference", meaning="this term's direct share of logit[answer] − logit[wrong]",
                caption="dashed line: 0; the bars sum to the terms' sum above",
            )
        )  # fmt: skip
        rows_ = [[row["term"], row["kind"], row["layer"], row["head"], _fmt(row["value"])] for row in result.table]
        sec.add(Table(rows_, ["term", "kind", "layer", "head", "value"], "every term", collapsed=True))
    else:
        unit = "score (fraction restored)"
        s.add(Text(f"Top {TOP_K} by |score| ({y}, {x}: score):"), Text(items=_top(result, rows, columns)))
        sec = r.section(name[0].upper() + name[1:], "grid")
        if method == "path":
            into = ", ".join(settings["receivers"]) if isinstance(settings.get("receivers"), list) else "the logits"
            title = "senders × receivers" if x == "receiver" else f"senders (layer × head) into {into}"
            caption = "grey: a sender not below the receiver (not measured)" if x == "receiver" else ""
            sec.add(_grid_figure(result, "circuit.scores", title, meaning, unit, 1.0, caption))
        else:
            sec.add(
                _grid_figure(result, "circuit.scores", f"{'estimated ' if method == 'attrib' else ''}score ({y} × {x})", meaning, unit, 1.0)
            )
        if method == "attrib" and meta.get("agreement"):
            a = meta["agreement"]
            sec.add(
                Text(
                    f"Agreement with activation patching over {a['units']} units: Pearson {a['pearson']:.3f}, Spearman "
                    f"{a['spearman']:.3f}; {a['top_k_overlap']:.0%} of the top {a['k']} units by |score| are the same."
                )
            )
    pairs = meta.get("pairs") or []
    if pairs:
        r.section("Prompt pairs", "pairs").add(
            Table(
                [[i, p["clean"], p["corrupted"], p["answer"], p["wrong"]] for i, p in enumerate(pairs)],
                ["pair", "clean", "corrupted", "answer", "wrong"],
            )
        )
    model = [["model identity", meta["model"]["identity"]]] + [[f"weights {k}", v] for k, v in (meta["model"].get("weights") or {}).items()]
    r.section("Settings", "settings").add(Table([[k, v] for k, v in settings.items()] + model))
    return r


def render(result, *, standalone: bool = True) -> str:
    """The HTML report of an :class:`attnlab.results.CircuitResult`."""
    return build(result).html(standalone=standalone)
