"""Inline SVG plots for self-contained reports: a line chart with confidence bands.

No scripts and no network: each chart is one ``<svg>`` element with its values in tooltips.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["COLOURS", "Series", "line_svg", "nice_ticks"]

# Okabe–Ito: distinguishable for colour-blind readers
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


@dataclass
class Series:
    """One line: ``y`` at ``x``, with an optional band ``low .. high`` (NaN or None where a value is missing)."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    low: Sequence[float] = field(default_factory=list)
    high: Sequence[float] = field(default_factory=list)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``lo .. hi``.

    Example:
        >>> nice_ticks(0.0, 1.0)
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _ok(v) -> bool:
    """A plottable number (None and NaN mark missing values)."""
    return v is not None and math.isfinite(v)


def _fmt(v: float | None) -> str:
    return f"{v:.4g}" if _ok(v) else "nan"


def line_svg(
    series: Sequence[Series],
    *,
    x_label: str = "",
    y_label: str = "",
    width: int = 640,
    height: int = 320,
    y_range: tuple[float, float] | None = None,
) -> str:
    """A line chart of ``series`` as inline SVG: one coloured line per series, its band shaded, a legend.

    Example:
        >>> svg = line_svg([Series("mha", [0, 1, 2], [0.1, 0.5, 0.9], [0.0, 0.4, 0.8], [0.2, 0.6, 1.0])], y_label="accuracy")
        >>> svg.startswith("<svg") and "mha" in svg
        True
    """
    pts = [(x, v) for s in series for x, *vs in zip(s.x, s.y, *(b for b in (s.low, s.high) if b)) for v in vs if _ok(v)]
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40" role="img"><text x="4" y="20">no data</text></svg>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = y_range or (min(p[1] for p in pts), max(p[1] for p in pts))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    left, right, top, bottom = 56, 150, 12, 40
    pw, ph = width - left - right, height - top - bottom

    def X(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        return top + (1 - (min(max(y, y0), y1) - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="lines" role="img">']
    for t in nice_ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{Y(t) + 3:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in nice_ticks(x0, x1):
        out.append(f'<text x="{X(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(
        f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" text-anchor="middle">{html.escape(y_label)}</text>'
    )
    for i, s in enumerate(series):
        colour, name = COLOURS[i % len(COLOURS)], html.escape(s.name)
        band = [(x, lo, hi) for x, lo, hi in zip(s.x, s.low, s.high) if _ok(lo) and _ok(hi)]
        if len(band) >= 2:
            poly = [f"{X(x):.1f},{Y(hi):.1f}" for x, _, hi in band] + [f"{X(x):.1f},{Y(lo):.1f}" for x, lo, _ in reversed(band)]
            out.append(
                f'<polygon points="{" ".join(poly)}" fill="{colour}" fill-opacity="0.18" stroke="none"><title>{name}: 95% CI</title></polygon>'
            )
        line = [(x, y) for x, y in zip(s.x, s.y) if _ok(y)]
        if len(line) >= 2:
            path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in line)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for k, (x, y) in enumerate(zip(s.x, s.y)):
            if not _ok(y):
                continue
            has_ci = k < min(len(s.low), len(s.high)) and _ok(s.low[k]) and _ok(s.high[k])
            ci = f", 95% CI [{_fmt(s.low[k])}, {_fmt(s.high[k])}]" if has_ci else ""
            out.append(
                f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{colour}"><title>{name} at {_fmt(x)}: {_fmt(y)}{ci}</title></circle>'
            )
        ly = top + 12 + i * 16
        out.append(f'<rect x="{left + pw + 12}" y="{ly - 8}" width="14" height="4" fill="{colour}"/>')
        out.append(f'<text x="{left + pw + 32}" y="{ly - 3}">{name}</text>')
    out.append("</svg>")
    return "".join(out)
