"""A scan's HTML report: one self-contained file (CSS and SVG inline, no scripts, no network).

Layer × head heatmaps per probe, per-layer bars, the tables the probes produce, the findings in
sentences, and a few whole attention maps of a short prompt. Every cell carries its value in a
tooltip, so nothing needs a notebook.
"""

from __future__ import annotations

import html
import math

from jinja2 import Environment

__all__ = ["bars_svg", "heatmap_svg", "render"]

# viridis, 9 stops: readable for colour-blind readers and in greyscale
_VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]


def _colour(t: float) -> str:
    if not math.isfinite(t):
        return "#dddddd"
    t = min(1.0, max(0.0, t)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = (tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for c in (_VIRIDIS[i], _VIRIDIS[i + 1]))
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


def heatmap_svg(
    grid: list[list[float]], *, row_label: str = "layer", col_label: str = "head", row_names=None, col_names=None, cell: int = 14
) -> str:
    """A heatmap of ``grid[row][col]`` as inline SVG, with a colour bar and per-cell tooltips."""
    rows = len(grid)
    cols = max((len(r) for r in grid), default=0)
    vals = [v for r in grid for v in r if math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    span = (hi - lo) or 1.0
    left, top = 64 if row_names else 36, 22 if not col_names else 64
    w, h = left + cols * cell + 96, top + rows * cell + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="heat" role="img">']
    for i, r in enumerate(grid):
        y = top + i * cell
        label = html.escape(row_names[i]) if row_names else str(i)
        if row_names or i % 5 == 0:
            out.append(f'<text x="{left - 4}" y="{y + cell - 3}" text-anchor="end">{label}</text>')
        for j, v in enumerate(r):
            x = left + j * cell
            name_r = html.escape(row_names[i]) if row_names else f"{row_label} {i}"
            name_c = html.escape(col_names[j]) if col_names else f"{col_label} {j}"
            out.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_colour((v - lo) / span)}"><title>{name_r}, {name_c}: {_fmt(v)}</title></rect>'
            )
    for j in range(cols):
        x = left + j * cell + cell / 2
        if col_names:
            out.append(f'<text x="{x}" y="{top - 4}" transform="rotate(-60 {x} {top - 4})">{html.escape(col_names[j])}</text>')
        elif j % 2 == 0 or cols <= 16:
            out.append(f'<text x="{x}" y="{top - 6}" text-anchor="middle">{j}</text>')
    out.append(f'<text x="{left}" y="{h - 6}">{col_label} →</text>' if not col_names else "")
    bx = left + cols * cell + 16
    for k in range(10):
        out.append(
            f'<rect x="{bx}" y="{top + (9 - k) * rows * cell / 10}" width="12" height="{rows * cell / 10 + 0.5}" fill="{_colour(k / 9)}"/>'
        )
    out.append(f'<text x="{bx + 16}" y="{top + 9}">{_fmt(hi)}</text><text x="{bx + 16}" y="{top + rows * cell}">{_fmt(lo)}</text>')
    out.append("</svg>")
    return "".join(out)


def bars_svg(values: list[float], *, label: str = "layer", height: int = 120, bar: int = 16) -> str:
    """One bar per layer as inline SVG, with values in tooltips."""
    vals = [v if math.isfinite(v) else 0.0 for v in values]
    if not vals:
        return ""
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    span = (hi - lo) or 1.0
    left, top = 44, 8
    w = left + len(vals) * (bar + 2) + 8
    zero = top + height * hi / span
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{top + height + 24}" class="bars" role="img">']
    out.append(
        f'<text x="{left - 4}" y="{top + 9}" text-anchor="end">{_fmt(hi)}</text><text x="{left - 4}" y="{top + height}" text-anchor="end">{_fmt(lo)}</text>'
    )
    for i, (v, raw) in enumerate(zip(vals, values)):
        x = left + i * (bar + 2)
        y, hgt = (zero - height * v / span, height * v / span) if v >= 0 else (zero, -height * v / span)
        out.append(
            f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{max(hgt, 0.5):.1f}" fill="#3b528b"><title>{label} {i}: {_fmt(raw)}</title></rect>'
        )
        if i % 5 == 0:
            out.append(f'<text x="{x + bar / 2}" y="{top + height + 14}" text-anchor="middle">{i}</text>')
    out.append(f'<line x1="{left}" x2="{w}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#888"/></svg>')
    return "".join(out)


_TEMPLATE = """{% if standalone %}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>attnlab scan: {{ meta.model.identity }}</title>
<style>{{ css }}</style></head><body>{% endif %}
<div class="attnlab-report">
<h1>Attention scan: {{ meta.model.identity }}</h1>
<p class="meta">{{ meta.model.type }} · {{ meta.model.layers }} layers · {{ meta.model.heads }} heads ({{ meta.model.kv_heads }} kv heads) ·
scanned {{ meta.created }} in {{ meta.wall_s }} s · attnlab {{ meta.versions.attnlab }}, torch {{ meta.versions.torch }}{% if meta.versions.transformers %}, transformers {{ meta.versions.transformers }}{% endif %}</p>
{% set w = meta.model.weights %}{% if w %}<p class="meta">weights: {{ w.description or w.name }} · {{ w.format }} · {{ w.dtype }}{% if w.sha256 %} · sha256 {{ w.sha256[:16] }}…{% endif %}{% if w.revision %} · revision {{ w.revision }}{% endif %} · {{ w.source }}</p>{% endif %}
{% if meta.skipped or meta.capped %}<h2>Fitted to this model</h2>
<ul class="fitted">{% for s in meta.skipped %}<li>skipped {{ s.what }}: {{ s.why }}</li>{% endfor %}
{% for c in meta.capped %}<li>capped {{ c.what }} at {{ c.used }} (default {{ c.default }}): {{ c.why }}</li>{% endfor %}</ul>{% endif %}
<h2>Findings</h2>
<ul class="findings">{% for probe, f in findings.items() %}{% for n in f.notes %}<li><b>{{ probe }}</b>: {{ n }}</li>{% endfor %}{% endfor %}</ul>
{% for probe, f in findings.items() %}
<section><h2>{{ probe }}</h2>
{% for title, svg in f.heat %}<figure><figcaption>{{ title }} (layer × head)</figcaption>{{ svg|safe }}</figure>{% endfor %}
{% for title, svg in f.bar %}<figure><figcaption>{{ title }} (per layer)</figcaption>{{ svg|safe }}</figure>{% endfor %}
{% for title, rows in f.tables %}{% if rows %}<details{% if loop.first %} open{% endif %}><summary>{{ title }} ({{ rows|length }})</summary>
<table><tr>{% for k in rows[0].keys() %}<th>{{ k|replace("_", " ") }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for v in r.values() %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table></details>{% endif %}{% endfor %}
</section>{% endfor %}
{% if maps %}<section><h2>Attention maps of a short prompt</h2>
<p>The first {{ maps[0].tokens|length // 2 }} tokens of the text, said twice: from the second copy, an induction head looks at the token after the same token in the first.</p>
{% for m in maps %}<figure><figcaption>layer {{ m.layer }} head {{ m.head }}: {{ m.why }} (rows: queries, columns: keys)</figcaption>{{ m.svg|safe }}</figure>{% endfor %}</section>{% endif %}
<section><h2>Settings</h2><table>{% for k, v in meta.settings.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
<tr><th>inputs</th><td>{% for i in meta.inputs %}{{ i }}<br>{% endfor %}</td></tr></table></section>
</div>{% if standalone %}</body></html>{% endif %}
"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666}.findings li{margin:.2em 0}figure{display:inline-block;margin:.5em 1.5em .5em 0;vertical-align:top}
figcaption{font-weight:600;margin-bottom:.3em}svg text{font-size:10px;fill:#444}table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:12px}th{background:#f5f5f5}details{margin:.6em 0}
summary{cursor:pointer;font-weight:600}
"""


def _short(token: str) -> str:
    t = token.replace("\n", "↵").replace(" ", "·")
    return t if len(t) <= 10 else t[:9] + "…"


def render(result, *, standalone: bool = True) -> str:
    """The report of a :class:`attnlab.results.ScanResult` as HTML (a whole page, or a fragment).

    Findings are shown under their titles (``findings[probe]["titles"][id]``, else the id).
    """
    findings = {}
    for probe, f in result.findings.items():
        titles = f.get("titles", {})
        findings[probe] = {
            "notes": f.get("notes", []),
            "heat": [(titles.get(k, k), heatmap_svg(grid)) for k, grid in f.get("heatmaps", {}).items() if any(grid)],
            "bar": [(titles.get(k, k), bars_svg(vals)) for k, vals in f.get("bars", {}).items() if vals],
            "tables": [(titles.get(k, k), rows) for k, rows in f.get("tables", {}).items()],
        }
    maps = [
        {
            **m,
            "svg": heatmap_svg(
                m["matrix"],
                row_names=[_short(t) for t in m["tokens"]],
                col_names=[_short(t) for t in m["tokens"]],
                cell=11,
                row_label="query",
                col_label="key",
            ),
        }
        for m in result.maps
    ]
    env = Environment(autoescape=True)
    return env.from_string(_TEMPLATE).render(meta=result.meta, findings=findings, maps=maps, css=_CSS, standalone=standalone)
