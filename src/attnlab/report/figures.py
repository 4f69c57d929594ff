"""The figures of attnlab reports, made with altair (Vega-Lite): heatmaps, per-layer bars, lines, attention maps.

Every function returns a :class:`attnlab.report.page.Figure` (a name, a title and a Vega-Lite
spec). Tooltips say where a mark is, its value and what the value means; cells that were not
measured, and attention cells a mask hides, are drawn in grey, never as a 0.

Example:
    >>> f = heatmap("sink.first_token_mass", "first-token mass", [[0.9, 0.1], [0.5, float("nan")]], meaning="attention on token 0")
    >>> f.spec["layer"][1]["mark"]["type"], len(f.spec["datasets"]["cells"])
    ('rect', 4)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import altair as alt

from attnlab.report.page import Figure

__all__ = ["GREY", "Series", "attention_viewer", "bars", "heatmap", "lines", "per_layer"]

GREY = "#d4d4d4"  # not measured / masked: distinct from every colour of the scales
SCHEME = "viridis"  # readable by colour-blind readers and in greyscale
BAR = "#3b528b"


def _num(v) -> float | None:
    """A number for the spec (None where it is missing or not finite)."""
    return float(v) if v is not None and math.isfinite(v) else None


def _text(expr: str) -> str:
    """``expr`` as a Vega expression string literal."""
    return json.dumps(expr, ensure_ascii=False)


def _spec(chart, **datasets: list[dict]) -> dict:
    """The chart's Vega-Lite spec, with ``datasets`` (named in the chart by ``alt.Data(name=...)``) put in after
    altair checks the spec: checking thousands of data rows against the schema takes seconds and proves nothing."""
    return {**chart.to_dict(), "datasets": datasets}


def heatmap(
    name: str,
    title: str,
    grid: Sequence[Sequence[float]],
    *,
    meaning: str,
    unit: str = "",
    domain: tuple[float, float] | None = None,
    label: str = "",
    caption: str = "",
    axes: tuple[str, str] = ("layer", "head"),
    rows: Sequence | None = None,
    columns: Sequence | None = None,
    diverging: bool = False,
) -> Figure:
    """A ``[row][column]`` heatmap (``[layer][head]`` by default): hover a cell for where it is, its value and what the value means.

    Args:
        label: the value's name in tooltips (default: ``title``).
        meaning: what the value measures, in words (shown in every tooltip).
        unit: the colour bar's title (what the values are in).
        domain: the colour scale's range of values; heatmaps whose values compare share one.
            None: the values' own range (``diverging``: ± the largest magnitude).
        axes: the names of the rows and the columns (``("layer", "position")``, ``("sender", "receiver")``).
        rows, columns: their labels, in order (default ``0, 1, ...``).
        diverging: a blue–orange scale centred at 0 (signed scores), instead of viridis.
    """
    y, x = axes
    ys = list(rows) if rows is not None else list(range(len(grid)))
    xs = list(columns) if columns is not None else list(range(max((len(r) for r in grid), default=0)))
    cells = [{y: ys[i], x: xs[j], "value": _num(v)} for i, row in enumerate(grid) for j, v in enumerate(row)]
    base = alt.Chart(alt.Data(name="cells")).encode(
        x=alt.X(f"{x}:O", title=x, axis=alt.Axis(labelAngle=0 if columns is None else -60), **({} if columns is None else {"sort": xs})),
        y=alt.Y(f"{y}:O", title=y, **({} if rows is None else {"sort": ys})),
    )
    missing = (
        base.mark_rect(color=GREY)
        .transform_filter("datum.value === null")
        .transform_calculate(value="'not measured'")
        .encode(tooltip=[f"{y}:O", f"{x}:O", alt.Tooltip("value:N", title=label or title)])
    )
    if diverging:
        top = max(abs(v) for v in domain) if domain else max([abs(c["value"]) for c in cells if c["value"] is not None] + [1e-12])
        scale = alt.Scale(scheme="blueorange", domain=[-top, top], domainMid=0)
    else:
        scale = alt.Scale(scheme=SCHEME, domain=list(domain)) if domain else alt.Scale(scheme=SCHEME, zero=False)
    drawn = (
        base.mark_rect()
        .transform_filter("datum.value !== null")
        .transform_calculate(meaning=_text(meaning))
        .encode(
            color=alt.Color("value:Q", scale=scale, title=unit or title, legend=alt.Legend(gradientLength=160, tickCount=5, format=".3~g")),
            tooltip=[
                alt.Tooltip(f"{y}:O"),
                alt.Tooltip(f"{x}:O"),
                alt.Tooltip("value:Q", title=label or title, format=".3~g"),
                alt.Tooltip("meaning:N", title="what it measures"),
            ],
        )
    )
    chart = alt.layer(missing, drawn).properties(width=alt.Step(16), height=alt.Step(13))
    return Figure(name, title, _spec(chart, cells=cells), caption)


def per_layer(
    name: str,
    title: str,
    values: Sequence[float],
    *,
    meaning: str,
    unit: str = "",
    reference: float | None = None,
    log: bool = False,
    caption: str = "",
) -> Figure:
    """One bar per layer (y titled with ``unit``), with a dashed rule at ``reference`` (1 for a ratio; ``log``: a log axis)."""
    rows = [{"layer": i, "value": _num(v)} for i, v in enumerate(values)]
    return bars(
        name, title, rows, x="layer", x_title="layer", y_title=unit or title, meaning=meaning, reference=reference, log=log, caption=caption
    )


def bars(
    name: str,
    title: str,
    rows: Sequence[dict],
    *,
    x: str,
    x_title: str,
    y_title: str,
    meaning: str = "",
    reference: float | None = 0.0,
    error: str | None = None,
    log: bool = False,
    caption: str = "",
) -> Figure:
    """A bar chart of ``rows`` (``{x: label, "value": number}``), optional error bars (``value ± row[error]``).

    ``reference``: a dashed horizontal rule (0 for differences, 1 for ratios, None for none).
    ``log``: a log y axis (ratios spanning decades); bars then rise from the axis' lowest value.
    Bars whose value is missing (or not positive on a log axis) are left out.
    """
    rows = [{**r, "value": _num(r["value"])} for r in rows]
    tips = [alt.Tooltip(f"{x}:O", title=x_title), alt.Tooltip("value:Q", title=y_title, format=".4~g")]
    if meaning:
        tips.append(alt.Tooltip("meaning:N", title="what it measures"))
    if error:
        tips.append(alt.Tooltip(f"{error}:Q", title="± (95% CI half-width)", format=".3~g"))
    keep = "datum.value !== null" + (" && datum.value > 0" if log else "")
    base = alt.Chart(alt.Data(name="bars")).transform_filter(keep).transform_calculate(meaning=_text(meaning))
    scale = alt.Scale(type="log") if log else alt.Scale()
    enc_x = alt.X(f"{x}:O", title=x_title, sort=None, axis=alt.Axis(labelAngle=0 if len(rows) <= 12 else -90, labelLimit=160))
    layers = [
        base.mark_bar(color=BAR).encode(
            x=enc_x, y=alt.Y("value:Q", title=y_title, scale=scale, stack=None, axis=alt.Axis(tickCount=6)), tooltip=tips
        )
    ]
    if error:
        layers.append(
            base.transform_calculate(lo=f"datum.value - datum.{error}", hi=f"datum.value + datum.{error}")
            .mark_rule(color="#222")
            .encode(x=enc_x, y="lo:Q", y2="hi:Q", tooltip=tips)
        )
    if reference is not None:
        layers.append(alt.Chart(alt.Data(values=[{"ref": reference}])).mark_rule(color="#c0392b", strokeDash=[4, 3]).encode(y="ref:Q"))
    width = alt.Step(18) if len(rows) > 12 else alt.Step(48)
    return Figure(name, title, _spec(alt.layer(*layers).properties(width=width, height=200), bars=rows), caption)


@dataclass
class Series:
    """One line: ``y`` at ``x``, with an optional 95% CI band ``low .. high`` (None or NaN where missing)."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    low: Sequence[float] = field(default_factory=list)
    high: Sequence[float] = field(default_factory=list)


def lines(
    name: str,
    title: str,
    series: Sequence[Series],
    *,
    x_title: str,
    y_title: str,
    log_x: bool = False,
    log_y: bool = False,
    reference: float | None = None,
    caption: str = "",
) -> Figure:
    """One coloured line per series with its CI band shaded; hover a point for its value (and CI)."""
    rows = []
    for s in series:
        for k, (x, y) in enumerate(zip(s.x, s.y)):
            lo = _num(s.low[k]) if k < len(s.low) else None
            hi = _num(s.high[k]) if k < len(s.high) else None
            rows.append({"series": s.name, "x": _num(x), "y": _num(y), "low": lo, "high": hi})
    keep = "datum.y !== null && datum.x !== null" + (" && datum.x > 0" if log_x else "") + (" && datum.y > 0" if log_y else "")
    base = alt.Chart(alt.Data(name="points")).transform_filter(keep)
    xs = alt.X("x:Q", title=x_title, scale=alt.Scale(type="log") if log_x else alt.Scale(zero=False))
    ys = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    colour = alt.Color("series:N", title=None, sort=None, scale=alt.Scale(scheme="tableau10"))
    tips = [alt.Tooltip("series:N"), alt.Tooltip("x:Q", title=x_title, format=".4~g"), alt.Tooltip("y:Q", title=y_title, format=".4~g")]
    layers = []
    if any(r["low"] is not None and r["high"] is not None for r in rows):
        tips += [alt.Tooltip("low:Q", title="95% CI low", format=".4~g"), alt.Tooltip("high:Q", title="95% CI high", format=".4~g")]
        layers.append(
            base.transform_filter("datum.low !== null && datum.high !== null")
            .mark_area(opacity=0.18)
            .encode(x=xs, y=alt.Y("low:Q", scale=ys), y2="high:Q", color=colour)
        )
    layers.append(base.mark_line().encode(x=xs, y=alt.Y("y:Q", title=y_title, scale=ys), color=colour))
    layers.append(base.mark_point(filled=True, size=22).encode(x=xs, y=alt.Y("y:Q", scale=ys), color=colour, tooltip=tips))
    if reference is not None:
        layers.append(alt.Chart(alt.Data(values=[{"ref": reference}])).mark_rule(color="#c0392b", strokeDash=[4, 3]).encode(y="ref:Q"))
    return Figure(name, title, _spec(alt.layer(*layers).properties(width=520, height=260), points=rows), caption)


def _short(token: str) -> str:
    t = token.replace("\n", "↵").replace(" ", "·")
    return t if len(t) <= 12 else t[:11] + "…"


def attention_viewer(name: str, title: str, maps: Sequence[dict], *, caption: str = "") -> Figure:
    """Whole attention maps of chosen heads on one prompt: pick a head, hover a token to light its row and column.

    ``maps``: ``{"layer", "head", "why", "tokens", "matrix"}`` per head (all on the same tokens);
    ``matrix[q][k]`` is the attention of query ``q`` on key ``k``, None where a mask hides the key.
    The head is chosen in a drop-down (the Vega param ``head``); hovering a token on the left
    (param ``token``) keeps its row (what it attends to) and its column (what attends to it)
    opaque and fades the rest; hovering a cell shows query, key and weight.
    """
    if not maps:
        raise ValueError("attention_viewer needs at least one map: give maps=[{'layer', 'head', 'why', 'tokens', 'matrix'}, ...]")
    tokens = maps[0]["tokens"]
    if any(m["tokens"] != tokens for m in maps):
        raise ValueError("attention_viewer draws maps of one prompt: every map's tokens must be the same")
    labels = [f"{i} {_short(t)}" for i, t in enumerate(tokens)]
    cells = [
        {"h": n, "q": q, "k": k, "w": _num(w)} for n, m in enumerate(maps) for q, row in enumerate(m["matrix"]) for k, w in enumerate(row)
    ]
    heads = [f"L{m['layer']}H{m['head']}: {m['why']}" for m in maps]
    head = alt.param(name="head", value=0, bind=alt.binding_select(options=list(range(len(maps))), labels=heads, name="head "))
    tok = alt.param(name="tok", value=labels)  # the token labels, read by axis labels and tooltips
    row = alt.selection_point(name="token_row", fields=["q"], on="mouseover", clear="mouseout")
    col = alt.selection_point(name="token_col", fields=["k"], on="mouseover", clear="mouseout")
    step = 10 if len(tokens) <= 70 else 8
    strip = (
        alt.Chart(alt.Data(name="tokens"))
        .mark_text(align="right", baseline="middle", fontSize=min(11, step + 1))
        .encode(
            y=alt.Y("q:O", axis=None, scale=alt.Scale(paddingInner=0)),  # the same rows as the map's
            text="t:N",
            color=alt.condition(row, alt.value("#111"), alt.value("#aaa")),
            tooltip=[alt.Tooltip("t:N", title="token (hover: its row and column)")],
        )
        .add_params(row, col)
        .properties(width=110, height=alt.Step(step), name="tokens", view=alt.ViewConfig(stroke=None))
    )
    weight = alt.Color(
        "w:Q", title="attention weight", scale=alt.Scale(scheme=SCHEME, domain=[0, 1]), legend=alt.Legend(gradientLength=200, tickCount=5)
    )
    base = (
        alt.Chart(alt.Data(name="cells"))
        .transform_filter("datum.h == head")
        .transform_calculate(query="tok[datum.q]", key="tok[datum.k]")
        .encode(
            x=alt.X(
                "k:O",
                title="key (column: what attends to this token)",
                axis=alt.Axis(orient="top", labelExpr="tok[datum.value]", labelAngle=-70, labelFontSize=9, labelLimit=90),
                scale=alt.Scale(paddingInner=0),
            ),
            y=alt.Y("q:O", axis=None, scale=alt.Scale(paddingInner=0)),  # the tokens on the left name the rows
            opacity=alt.condition(row | col, alt.value(1.0), alt.value(0.18)),
        )
    )
    masked = (
        base.transform_filter("datum.w === null")
        .transform_calculate(weight="'masked: this query cannot see this key'")
        .mark_rect(color=GREY)
        .encode(tooltip=[alt.Tooltip("query:N"), alt.Tooltip("key:N"), alt.Tooltip("weight:N")])
    )
    seen = (
        base.transform_filter("datum.w !== null")
        .mark_rect()
        .encode(
            color=weight,
            tooltip=[alt.Tooltip("query:N"), alt.Tooltip("key:N"), alt.Tooltip("w:Q", title="attention weight", format=".3f")],
        )
    )
    heat = alt.layer(masked, seen).properties(width=alt.Step(step), height=alt.Step(step))
    chart = alt.hconcat(strip, heat, spacing=4).resolve_scale(y="shared").add_params(head, tok)
    return Figure(name, title, _spec(chart, cells=cells, tokens=[{"q": i, "k": i, "t": t} for i, t in enumerate(labels)]), caption)
