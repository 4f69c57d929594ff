"""What every reproduction script does at the end: print the claim and this machine's numbers,
say whether the numbers support the claim, and save a table (md + json with provenance) and a
figure (an SVG drawn from a Vega-Lite spec by vl-convert: :func:`bar_chart`, :func:`line_chart`) to
``bench/results/repro/``."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import vl_convert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ for harness
from attnlab.report import figures
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
    figure: dict,
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
    (OUT / f"{name}.svg").write_text(vl_convert.vegalite_to_svg(figure))
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


def bar_chart(title: str, labels: list[str], values: list[float], errors: list[float] | None = None, ylabel: str = "") -> dict:
    """A bar chart (a Vega-Lite spec, made with altair) with optional error bars (± the 95% CI half-width) and a rule at 0."""
    rows = [{"label": lab, "value": v, "error": e} for lab, v, e in zip(labels, values, errors or [0.0] * len(values))]
    f = figures.bars("figure", title, rows, x="label", x_title="", y_title=ylabel, error="error" if errors else None)
    return {**f.spec, "title": title}


def line_chart(
    title: str,
    series: dict[str, tuple[list[float], list[float]]],
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
) -> dict:
    """A line chart (a Vega-Lite spec, made with altair): one line per named series of (xs, ys), with a legend.

    Non-finite points (a diverged run's NaN loss) are left out of the line."""
    lines = [figures.Series(name, xs, ys) for name, (xs, ys) in series.items()]
    f = figures.lines("figure", title, lines, x_title=xlabel, y_title=ylabel, log_x=logx, log_y=logy)
    return {**f.spec, "title": title}
