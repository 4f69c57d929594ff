"""A scan's report: findings in sentences, layer × head heatmaps, per-layer bars, tables, the attention viewer.

Heatmaps whose values are in the same unit share one colour scale (and a 0–1 unit is drawn on
0–1), so colours compare across a page; every tooltip says what its metric measures.
"""

from __future__ import annotations

import math

from attnlab.report import figures
from attnlab.report.page import Report, Table, Text

__all__ = ["METRICS", "build", "render"]

SHARE = "attention share (0–1)"

# "probe.id" -> (what the value measures, unit); a unit ending in "(0–1)" is drawn on 0–1, and a
# unit with "×" is a ratio, drawn with a rule at 1.
METRICS: dict[str, tuple[str, str]] = {
    "sink.first_token_mass": ("attention each query puts on the first token, per query that sees it (α₀)", SHARE),
    "sink.sink_rate": ("fraction of the layer's heads whose first-token attention α₀ exceeds ε", "fraction of heads (0–1)"),
    "entropy.normalized": (
        "entropy of each query's attention ÷ log(keys it sees): 0 on one key, 1 spread evenly",
        "normalised entropy (0–1)",
    ),
    "entropy.nats": ("entropy of each query's attention row, averaged over queries", "entropy (nats)"),
    "patterns.previous_token": ("share of attention on the previous token (repeated random tokens)", SHARE),
    "patterns.duplicate_token": ("share of attention on earlier copies of the same token (repeated random tokens)", SHARE),
    "patterns.induction": ("share of attention on the token after an earlier copy of the current one (repeated random tokens)", SHARE),
    "patterns.distance": ("mean distance |query − key| weighted by attention", "distance (tokens)"),
    "patterns.nmi": ("normalised mutual information of query and key positions: high is local, low is global", "NMI (0–1)"),
    "extreme.value_ratio": ("norm of the first token's value vector ÷ the median token's", "ratio to median (×)"),
    "extreme.residual_ratio": ("norm of the first token's residual stream ÷ the median token's", "ratio to median (×)"),
    "layer_importance.importance_attention": (
        "1 − cosine similarity of the residual stream before and after the attention sublayer",
        "1 − cosine similarity",
    ),
    "layer_importance.importance_block": (
        "1 − cosine similarity of the residual stream before and after the block",
        "1 − cosine similarity",
    ),
    "retrieval.score": (
        "per needle trial recalled, the share of answer tokens this head copied from the needle by attending to it",
        "retrieval score (0–1)",
    ),
}


def _meaning(probe: str, id: str, title: str) -> tuple[str, str]:
    return METRICS.get(f"{probe}.{id}", (title, ""))


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _domains(findings: dict) -> dict[str, tuple[float, float]]:
    """One colour range per unit over every heatmap in it: 0–1 units on 0–1, others from their values."""
    by_unit: dict[str, list[float]] = {}
    for probe, f in findings.items():
        for id, grid in f.get("heatmaps", {}).items():
            unit = _meaning(probe, id, "")[1]
            if unit:
                by_unit.setdefault(unit, []).extend(_finite(v for row in grid for v in row))
    out = {}
    for unit, vals in by_unit.items():
        if unit.endswith("(0–1)"):
            out[unit] = (0.0, 1.0)
        elif vals and max(vals) > min(vals):
            out[unit] = (min(vals), max(vals))
    return out


def _provenance(meta: dict) -> list[str]:
    m, v = meta["model"], meta["versions"]
    lines = [
        f"{m.get('type')} · {m.get('layers')} layers · {m.get('heads')} heads ({m.get('kv_heads')} kv heads) · scanned {meta['created']} "
        f"in {meta['wall_s']} s · attnlab {v['attnlab']}, torch {v['torch']}"
        + (f", transformers {v['transformers']}" if v.get("transformers") else "")
    ]
    lines += weights_line(m)
    return lines


def weights_line(model: dict) -> list[str]:
    """The weights record as one meta line (none when the loader set none)."""
    w = model.get("weights")
    if not w:
        return []
    parts = [w.get("description") or w.get("name"), w.get("format"), w.get("dtype")]
    parts += [f"sha256 {w['sha256'][:16]}…"] if w.get("sha256") else []
    parts += [f"revision {w['revision']}"] if w.get("revision") else []
    return ["weights: " + " · ".join(str(p) for p in [*parts, w.get("source")] if p)]


def build(result) -> Report:
    """The :class:`~attnlab.report.page.Report` of a :class:`attnlab.results.ScanResult`."""
    meta = result.meta
    r = Report(f"Attention scan: {meta['model']['identity']}", _provenance(meta))
    if meta.get("skipped") or meta.get("capped"):
        fitted = [f"skipped {s['what']}: {s['why']}" for s in meta.get("skipped", [])]
        fitted += [f"capped {c['what']} at {c['used']} (default {c['default']}): {c['why']}" for c in meta.get("capped", [])]
        r.section("Fitted to this model", "fitted").add(Text(items=fitted))
    notes = [f"{probe}: {n}" for probe, f in result.findings.items() for n in f.get("notes", [])]
    r.section("Findings", "findings").add(Text(items=notes) if notes else Text("The probes made no findings."))
    domains = _domains(result.findings)
    for probe, f in result.findings.items():
        s = r.section(probe, probe)
        titles = f.get("titles", {})
        for id, grid in f.get("heatmaps", {}).items():
            if not any(grid):
                continue
            title = titles.get(id, id)
            meaning, unit = _meaning(probe, id, title)
            s.add(
                figures.heatmap(
                    f"{probe}.{id}", f"{title} (layer × head)", grid, meaning=meaning, unit=unit, domain=domains.get(unit), label=title
                )
            )
        for id, values in f.get("bars", {}).items():
            if not values:
                continue
            title = titles.get(id, id)
            meaning, unit = _meaning(probe, id, title)
            ratio = "×" in unit
            reference = 1.0 if ratio else None
            caption = "log axis; dashed line: 1× (the first token as large as the median one)" if ratio else ""
            s.add(
                figures.per_layer(
                    f"{probe}.{id}",
                    f"{title} (per layer)",
                    values,
                    meaning=meaning,
                    unit=unit,
                    reference=reference,
                    log=ratio,
                    caption=caption,
                )
            )
        for n, (id, rows) in enumerate(f.get("tables", {}).items()):
            if rows:
                header = [k.replace("_", " ") for k in rows[0]]
                s.add(Table([list(row.values()) for row in rows], header, titles.get(id, id), collapsed=n > 0))
    if result.maps:
        s = r.section("Attention maps of a short prompt", "maps")
        prompt = result.maps[0].get("prompt") or "the text's first tokens, said twice"
        s.add(
            Text(
                f"On {prompt} ({len(result.maps[0]['tokens'])} tokens). Pick a head in the list; hover a token on the left to light "
                "its row (the keys it attends to) and its column (the queries that attend to it); hover a cell for the weight. "
                "Grey cells are masked (a query cannot see a later key), not zero."
            )
        )
        s.add(figures.attention_viewer("attention_maps", "attention of chosen heads (rows: queries, columns: keys)", result.maps))
    settings = [[k, v] for k, v in meta["settings"].items()] + [["inputs", "; ".join(str(i) for i in meta.get("inputs", []))]]
    r.section("Settings", "settings").add(Table(settings))
    return r


def render(result, *, standalone: bool = True) -> str:
    """The report of a :class:`attnlab.results.ScanResult` as HTML (a whole page, or a fragment for a notebook)."""
    return build(result).html(standalone=standalone)
