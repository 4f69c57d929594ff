"""A circuit result's report: the method's grid as a diverging heatmap, the top components in words, the pairs and settings.

Paper: 5 (Circuit component reuse), 57 (Circuit analysis at scale), 69 (Influential neuron path) and 10 (NormGrad saliency).

One page per method (:mod:`attnlab.circuits`): activation patching (``patch``) and attribution
patching (``attrib``) draw the layer × head (or layer × position) grid of normalised scores,
attribution patching with its agreement with activation patching; path patching (``path``) the
senders × receivers grid; direct logit attribution (``dla``) each head's term, the terms per
layer, and their sum against the model's logit difference; integrated gradients (``ig``, paper 69)
each pair's neuron path, its per-layer attributions (layer × pair) and the drop of p(answer) when
it is ablated against random paths of the same size; NormGrad saliency (``saliency``, paper 10)
each token's score at each layer, both variants. Scores, terms and attributions are signed, so
those heatmaps are drawn on a blue–orange scale centred at 0; NormGrad is not negative (viridis).
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
    "ig": ("integrated gradients neuron paths", "joint integrated gradients of this layer's path neuron for p(answer) on the clean prompt"),
    "saliency": ("NormGrad saliency", "‖∂(logit[answer] − logit[wrong])/∂a‖ · ‖a‖ of this token's resid_pre, mean over pairs"),
}
SELECTIVE = "‖max(0, a ⊙ ∂(logit[answer] − logit[wrong])/∂a)‖ of this token's resid_pre, mean over pairs"


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
        rows=rows if y != "layer" or rows != list(range(len(rows))) else None, columns=columns if x == "receiver" else None, diverging=True,
    )  # fmt: skip


def _summary(result, method: str) -> list[str]:
    s = result.meta.get("summary", {})
    if method == "ig":
        return [
            f"p(answer) on the clean prompts, mean over pairs: {_fmt(s.get('p_target'))}",
            f"its drop when each pair's neuron path is ablated (neurons zeroed at every position): {_fmt(s.get('path_drop'))}; "
            f"when a random path of the same size is: {_fmt(s.get('random_drop'))}",
            f"the paths' joint integrated gradients sum to {_fmt(s.get('ig_sum'))} (completeness: ≈ the path's drop)",
        ]
    if method == "saliency":
        return [f"explained: logit[answer] − logit[wrong] on the clean prompts, mean over pairs: {_fmt(s.get('logit_diff'))}"]
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


def _ig_sections(r: Report, s, result, meaning: str) -> None:
    paths = result.meta.get("paths") or []
    s.add(Text("Each pair's neuron path (one MLP neuron per searched layer):"))
    s.add(Text(items=[f"pair {p['pair']}: {p['path']}" for p in paths]))
    sec = r.section("Neuron paths", "grid")
    sec.add(_grid_figure(result, "ig.attributions", "path neurons' attributions (layer × pair)", meaning, "joint IG of p(answer)", None))
    bars = [row for p in paths for row in ({"bar": f"P{p['pair']} path", "value": p["drop"]},
            {"bar": f"P{p['pair']} random", "value": sum(p["random_drops"]) / max(len(p["random_drops"]), 1)})]  # fmt: skip
    n = len(paths[0]["random_drops"]) if paths else 0
    sec.add(
        figures.bars(
            "ig.ablation", "drop of p(answer) when the path is ablated, against random paths", bars, x="bar", x_title="ablated",
            y_title="drop of p(answer)", meaning="p(answer) − p(answer | these neurons zeroed at every position)",
            caption=f"P0, P1, ...: the pairs; random: the mean over {n} random paths of the same size (one random neuron in each searched layer)",
        )
    )  # fmt: skip
    rows = [
        [p["pair"], p["path"], _fmt(p["p_target"]), _fmt(p["drop"]), _fmt(p["ig_sum"]), _fmt(max(p["random_drops"], default=math.nan)),
         "yes" if p["beats_random"] else "no"]
        for p in paths
    ]  # fmt: skip
    sec.add(Table(rows, ["pair", "path", "p(answer)", "path drop", "IG sum", "largest random drop", "beats every random path"]))


def _saliency_sections(r: Report, s, result, meaning: str) -> None:
    rows, columns = _labels(result)
    s.add(Text(f"Top {TOP_K} tokens by NormGrad (layer, position: score):"), Text(items=_top(result, rows, columns)))
    sec = r.section("NormGrad saliency", "grid")
    unit = "NormGrad"
    sec.add(figures.heatmap("saliency.normgrad", "NormGrad (layer × position)", result.grid, meaning=meaning, unit=unit,
                            label=unit, axes=("layer", "position")))  # fmt: skip
    selective = result.meta.get("selective_grid")
    if selective:
        sec.add(figures.heatmap("saliency.selective", "selective NormGrad (layer × position)", selective, meaning=SELECTIVE,
                                unit="selective NormGrad", label="selective NormGrad", axes=("layer", "position")))  # fmt: skip


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
    if method == "ig":
        _ig_sections(r, s, result, meaning)
    elif method == "saliency":
        _saliency_sections(r, s, result, meaning)
    elif method == "dla":
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
