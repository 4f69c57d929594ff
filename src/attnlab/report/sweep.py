"""A sweep's HTML report: one self-contained file (CSS and SVG inline, no scripts, no network).

The per-mechanism table (mean ± 95% CI over seeds) and the mean test-metric and training-loss
curves with their 95% CI bands.
"""

from __future__ import annotations

from jinja2 import Environment

from attnlab.report.plots import Series, line_svg

__all__ = ["render"]

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


def render(result) -> str:
    """The self-contained HTML report of a :class:`attnlab.train.SweepResult`."""

    def series(key):
        return [Series(m, c[key]["steps"], c[key]["mean"], c[key]["low"], c[key]["high"]) for m, c in result.curves.items()]

    plots = [
        ("test metric (mean over seeds, 95% CI band)", line_svg(series("test_metric"), x_label="step", y_label="test metric")),
        ("training loss (mean over seeds, 95% CI band)", line_svg(series("train_loss"), x_label="step", y_label="train loss")),
    ]
    return Environment(autoescape=True).from_string(_TEMPLATE).render(r=result, header=result.HEADER, rows=result.rows(), plots=plots)
