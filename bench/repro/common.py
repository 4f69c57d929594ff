"""What every reproduction script does at the end: print the claim and this machine's numbers,
say whether the numbers support the claim, and save a table (md + json with provenance) and a
figure (self-contained SVG) to ``bench/results/repro/``."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ for harness
from attnlab.stats import mean_ci
from harness import versions

OUT = Path(__file__).resolve().parents[1] / "results" / "repro"


def save(
    name: str,
    *,
    claim: str,
    paper: str,
    rows: list[dict],
    verdict: str,
    supported: bool,
    figure_svg: str,
    settings: dict,
    notes: str | None = None,
) -> None:
    """Print and save one reproduction's outcome.

    ``notes``: what changed since the last recorded run (a method's correction, the previous
    verdict's figures), kept in the json and printed under the verdict in the md.
    Rows may differ in their keys: the table has every key, blank where a row has none.
    """
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "claim": claim,
        "paper": paper,
        "supported": supported,
        "verdict": verdict,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "settings": settings,
    }
    if notes:
        meta["notes"] = notes
    (OUT / f"{name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1, default=str) + "\n")
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = [
        f"# {name}",
        "",
        f"**Claim (paper {paper}).** {claim}",
        "",
        f"**This machine ({'supported' if supported else 'NOT supported'}).** {verdict}",
        "",
    ]
    if notes:
        lines += [f"**Changed since the last run.** {notes}", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    lines += ["", f"![figure]({name}.svg)", "", f"{meta['created']} · " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    (OUT / f"{name}.svg").write_text(figure_svg)
    print(f"CLAIM (paper {paper}): {claim}")
    for r in rows:
        print("  ", r)
    print(("SUPPORTED: " if supported else "NOT SUPPORTED: ") + verdict)
    if notes:
        print("CHANGED: " + notes)
    print(f"wrote {OUT / name}.md, .json, .svg")


def fmt(values: list[float], digits: int = 3) -> str:
    """``mean ± half-width of the 95% CI`` over seeds (just the mean for one value)."""
    est = mean_ci(values)
    return f"{est.mean:.{digits}g} ± {(est.high - est.low) / 2:.2g}" if est.n > 1 else f"{est.mean:.{digits}g}"


def bar_chart(title: str, labels: list[str], values: list[float], errors: list[float] | None = None, ylabel: str = "") -> str:
    """A small standalone SVG bar chart with optional error bars; negative values hang below zero."""
    errors = errors or [0.0] * len(values)
    top = max([v + e for v, e in zip(values, errors)] + [0.0])
    bottom = min([v - e for v, e in zip(values, errors)] + [0.0])
    span = (top - bottom) or 1.0
    W, H, left, y_top, height = 90 * len(values) + 80, 300, 60, 30, 200

    def y(v: float) -> float:
        return y_top + height * (top - v) / span

    zero = y(0.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>',
           f'<text x="12" y="{y_top + height / 2}" transform="rotate(-90 12 {y_top + height / 2})" text-anchor="middle">{ylabel}</text>',
           f'<line x1="{left}" x2="{W - 10}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#888"/>']  # fmt: skip
    for i, (lab, v, e) in enumerate(zip(labels, values, errors)):
        x = left + 10 + i * 90
        y0, y1 = sorted((zero, y(v)))
        out.append(f'<rect x="{x}" y="{y0:.1f}" width="60" height="{y1 - y0:.1f}" fill="#3b528b"><title>{lab}: {v:.4g}</title></rect>')
        if e:
            out.append(f'<line x1="{x + 30}" x2="{x + 30}" y1="{y(v - e):.1f}" y2="{y(v + e):.1f}" stroke="#222"/>')
        out.append(f'<text x="{x + 30}" y="{y0 - 4:.1f}" text-anchor="middle">{v:.3g}</text>')
        out.append(f'<text x="{x + 30}" y="{y_top + height + 24}" text-anchor="middle">{lab}</text>')
    out.append("</svg>")
    return "".join(out)


PALETTE = ("#3b528b", "#d1495b", "#21918c", "#edae49", "#6a4c93", "#5ec962", "#444444", "#ff7f0e")


def line_chart(
    title: str,
    series: dict[str, tuple[list[float], list[float]]],
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
) -> str:
    """A small standalone SVG line chart: one polyline per named series of (xs, ys), with a legend.

    Non-finite points (a diverged run's NaN loss) are left out of the line."""
    import math

    def tx(v: float, log: bool) -> float:
        return math.log10(v) if log else v

    pts = {
        name: [(tx(x, logx), tx(y, logy)) for x, y in zip(xs, ys) if math.isfinite(y) and (not logx or x > 0) and (not logy or y > 0)]
        for name, (xs, ys) in series.items()
    }
    allp = [p for ps in pts.values() for p in ps] or [(0.0, 0.0)]
    x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
    y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    W, H, left, right, top, bottom = 560, 320, 64, 150, 30, 270

    def px(x: float) -> float:
        return left + (W - left - right) * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return bottom - (bottom - top) * (y - y0) / (y1 - y0)

    def label(v: float, log: bool) -> str:
        return f"{10**v:.3g}" if log else f"{v:.3g}"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<text x="{(W - right + left) / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>',
           f'<line x1="{left}" x2="{W - right}" y1="{bottom}" y2="{bottom}" stroke="#888"/>',
           f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#888"/>',
           f'<text x="{left}" y="{bottom + 14}" text-anchor="middle">{label(x0, logx)}</text>',
           f'<text x="{W - right}" y="{bottom + 14}" text-anchor="middle">{label(x1, logx)}</text>',
           f'<text x="{left - 4}" y="{bottom}" text-anchor="end">{label(y0, logy)}</text>',
           f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{label(y1, logy)}</text>',
           f'<text x="{(W - right + left) / 2}" y="{bottom + 30}" text-anchor="middle">{xlabel}</text>',
           f'<text x="14" y="{(top + bottom) / 2}" transform="rotate(-90 14 {(top + bottom) / 2})" text-anchor="middle">{ylabel}</text>']  # fmt: skip
    for i, (name, ps) in enumerate(pts.items()):
        colour = PALETTE[i % len(PALETTE)]
        if ps:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ps)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"><title>{name}</title></polyline>')
        ly = top + 14 * i
        out.append(f'<line x1="{W - right + 10}" x2="{W - right + 28}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{W - right + 32}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    return "".join(out)
