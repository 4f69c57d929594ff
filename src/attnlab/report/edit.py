"""An edit's HTML report: one self-contained file (CSS and SVG inline, no scripts, no network).

The before/after table with paired 95% CIs, and per example the change each edit made.
"""

from __future__ import annotations

from jinja2 import Environment

from attnlab.report.html import bars_svg

__all__ = ["render"]

_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>attnlab edit: {{ meta.model.identity }}</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 9px;text-align:left}th{background:#f5f5f5}
svg text{font-size:10px;fill:#444}.meta{color:#666}figure{display:inline-block;margin:.5em 1.5em .5em 0}</style></head><body>
<h1>Edit: {{ meta.settings.edits|join(" then ") }}</h1>
<p class="meta">{{ meta.model.identity }} · {{ meta.model.layers }} layers · {{ meta.created }} · {{ meta.wall_s }} s ·
attnlab {{ meta.versions.attnlab }}, torch {{ meta.versions.torch }} · {{ meta.composition }}</p>
{% set w = meta.model.weights %}{% if w %}<p class="meta">weights: {{ w.description or w.name }} · {{ w.format }} · {{ w.dtype }}{% if w.sha256 %} · sha256 {{ w.sha256[:16] }}…{% endif %}{% if w.revision %} · revision {{ w.revision }}{% endif %} · {{ w.source }}</p>{% endif %}
{% set c = meta.model.conventions %}{% if c %}<p class="meta">conventions: {{ c.kind }} · sequences start with {{ c.start|join(" ") or "nothing" }}{% if c.end %}, end with {{ c.end|join(" ") }}{% endif %} · {{ "chat template" if c.chat_template else "no chat template" }} · {{ c.positions or "undeclared" }} positions{% if c.sliding_window %} · sliding window {{ c.sliding_window }} on {{ c.sliding_layers }} of {{ c.layers }} layers{% endif %}{% if c.softcap %} · attention softcap {{ c.softcap }}{% endif %}</p>{% endif %}
{% for s in meta.skipped or [] %}<p class="meta">skipped {{ s.what }}: {{ s.why }}</p>{% endfor %}
{% if meta.applied %}<p class="meta">As applied (after calibration): {{ meta.applied|join("; ") }}</p>{% endif %}
<table><tr><th>metric</th><th>before</th><th>after</th><th>after − before</th><th>95% CI</th><th>examples</th><th>better is</th></tr>
{% for m in meta.metrics %}<tr><td>{{ m.metric }}</td><td>{{ "%.4g"|format(m.before) }}</td><td>{{ "%.4g"|format(m.after) }}</td>
<td>{{ "%+.4g"|format(m.difference) }}</td><td>[{{ "%+.3g"|format(m.ci95[0]) }}, {{ "%+.3g"|format(m.ci95[1]) }}]</td><td>{{ m.examples }}</td>
<td>{{ "higher" if m.higher_is_better else "lower" }}</td></tr>{% endfor %}</table>
{% for m in meta.metrics if m.tokens %}<p class="meta">{{ m.metric }} over all {{ m.tokens }} scored tokens (corpus value): {{ "%.4g"|format(m.pooled_before) }} before, {{ "%.4g"|format(m.pooled_after) }} after; the table's values are means over windows</p>{% endfor %}
<h2>Per example: after − before</h2>
{% for name, svg in plots %}<figure><figcaption>{{ name }}</figcaption>{{ svg|safe }}</figure>{% endfor %}
</body></html>
"""


def render(result) -> str:
    """The self-contained HTML report of an :class:`attnlab.results.EditResult` (no scripts, no network)."""
    plots = [(name, bars_svg([a - b for a, b in zip(v["after"], v["before"])], label="example")) for name, v in result.examples.items()]
    return Environment(autoescape=True).from_string(_TEMPLATE).render(meta=result.meta, plots=plots)
