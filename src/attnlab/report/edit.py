"""An edit's report: the before/after table with paired 95% CIs, and per example the change each edit made."""

from __future__ import annotations

from attnlab.report import figures
from attnlab.report.page import Report, Table, Text
from attnlab.report.scan import weights_line

__all__ = ["build", "render"]


def _conventions(c: dict) -> str:
    parts = [
        c["kind"],
        f"sequences start with {' '.join(c['start']) or 'nothing'}" + (f", end with {' '.join(c['end'])}" if c.get("end") else ""),
    ]
    parts.append("chat template" if c.get("chat_template") else "no chat template")
    parts.append(f"{c.get('positions') or 'undeclared'} positions")
    if c.get("sliding_window"):
        parts.append(f"sliding window {c['sliding_window']} on {c['sliding_layers']} of {c['layers']} layers")
    if c.get("softcap"):
        parts.append(f"attention softcap {c['softcap']}")
    return "conventions: " + " · ".join(parts)


def _applied(meta: dict) -> str:
    """What was applied, and "calibrated ..." only for the edits that were."""
    calibrated = meta.get("calibrated") or []
    text = "Applied: " + "; ".join(meta.get("applied") or meta["settings"]["edits"])
    if calibrated:
        text += ". Calibrated before measuring: " + "; ".join(f"{c['edit']} on {c['on']}, as applied: {c['applied']}" for c in calibrated)
    return text + "."


def build(result) -> Report:
    """The :class:`~attnlab.report.page.Report` of an :class:`attnlab.results.EditResult`."""
    meta = result.meta
    m, v = meta["model"], meta["versions"]
    lines = [
        f"{m['identity']} · {m.get('layers')} layers · {meta['created']} · {meta['wall_s']} s · attnlab {v['attnlab']}, torch {v['torch']}"
        + (f" · {meta['composition']}" if meta.get("composition") else "")
    ]
    lines += weights_line(m)
    lines += [_conventions(m["conventions"])] if m.get("conventions") else []
    lines += [f"skipped {s['what']}: {s['why']}" for s in meta.get("skipped") or []]
    r = Report(f"Edit: {' then '.join(meta['settings']['edits'])}", lines)
    s = r.section("Before and after", "summary").add(Text(_applied(meta)))
    header = ["metric", "before", "after", "after − before", "95% CI", "examples", "better is"]
    rows = [
        [
            x["metric"],
            f"{x['before']:.4g}",
            f"{x['after']:.4g}",
            f"{x['difference']:+.4g}",
            f"[{x['ci95'][0]:+.3g}, {x['ci95'][1]:+.3g}]",
            x["examples"],
            {True: "higher", False: "lower"}.get(x.get("higher_is_better"), ""),
        ]
        for x in meta["metrics"]
    ]
    s.add(Table(rows, header))
    for x in meta["metrics"]:
        if x.get("tokens"):
            s.add(
                Text(
                    f"{x['metric']} over all {x['tokens']} scored tokens (corpus value): {x['pooled_before']:.4g} before, "
                    f"{x['pooled_after']:.4g} after; the table's values are means over windows",
                    meta=True,
                )
            )
    s = r.section("Per example: after − before", "examples")
    for name, ex in result.examples.items():
        rows = [{"example": i, "value": a - b} for i, (b, a) in enumerate(zip(ex["before"], ex["after"]))]
        s.add(
            figures.bars(
                f"examples.{name}", name, rows, x="example", x_title="example", y_title=f"{name}: after − before",
                meaning=f"the edit's change in {name} on this example", caption="dashed line: no change",
            )
        )  # fmt: skip
    return r


def render(result, *, standalone: bool = True) -> str:
    """The HTML report of an :class:`attnlab.results.EditResult`."""
    return build(result).html(standalone=standalone)
