"""A representation result's report: per-layer curves, the layer × layer CKA heatmap, and the settings.

Paper: 13 (Concept depth), 35 (Implicit multimodal alignment), 66 (Convergent learning).

Layer 0 on every axis is the embeddings; layer ``i + 1`` is layer ``i``'s output (``layers.{i}.resid_post``).
"""

from __future__ import annotations

from attnlab.report import figures
from attnlab.report.circuits import _provenance
from attnlab.report.page import Report, Table, Text

__all__ = ["build"]

AXIS = "stream (0: embeddings, i + 1: layer i's output)"
TITLES = {
    "probe": "linear probes per layer",
    "cka": "linear CKA between layers",
    "match": "unit matching between two models",
    "align": "token-group and consecutive-layer cosine",
}


def _series(rows: list[dict], key: str, by: str | None = None, name: str = "") -> list[figures.Series]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[by]) if by else name or key, []).append(r)
    return [figures.Series(n, [r["layer"] for r in rs], [r[key] for r in rs]) for n, rs in groups.items()]


def _probe(r: Report, result) -> None:
    best = result.meta["best"]
    r.section("Summary", "summary").add(
        Text(
            items=[
                f"{c}: best accuracy {b['accuracy']:.3f} at stream {b['layer']} (selectivity {b['selectivity']:+.3f})"
                for c, b in best.items()
            ]
        ),
        Text(
            f"Probe rows: the {result.meta['pooling']} token's state; accuracy over {result.meta['settings']['folds']}-fold cross-validation."
        ),
    )
    sec = r.section("Accuracy per layer", "curves")
    control = [figures.Series(f"{s.name} (control)", s.x, s.y) for s in _series(result.table, "control", "concept")]
    sec.add(
        figures.lines(
            "represent.probe", "probe accuracy per layer, by concept", _series(result.table, "accuracy", "concept"),
            x_title=AXIS, y_title="cross-validated accuracy", reference=0.5,
            caption="dashed line: 0.5; a concept is decodable where its accuracy beats its control (shuffled labels)",
        ),
        figures.lines("represent.control", "control task (shuffled labels) per layer", control, x_title=AXIS, y_title="accuracy", reference=0.5),
    )  # fmt: skip
    rows = [
        [t["concept"], t["layer"], f"{t['accuracy']:.3f}", f"{t['std']:.3f}", f"{t['control']:.3f}", f"{t['chance']:.3f}"]
        for t in result.table
    ]
    sec.add(Table(rows, ["concept", "stream", "accuracy", "std", "control", "majority"], "every probe", collapsed=True))


def _cka(r: Report, result) -> None:
    grid = result.grid
    two = len(result.meta["models"]) == 2
    diag = [grid[i][i] for i in range(min(len(grid), len(grid[0])))]
    s = r.section("Summary", "summary")
    s.add(Text(f"Linear CKA over {result.meta['tokens']} tokens; 1 is the same representation up to rotation and scale."))
    sec = r.section("CKA", "grid")
    a, b = (m["identity"] for m in result.meta["models"]) if two else ("model", "model")
    sec.add(
        figures.heatmap(
            "represent.cka", f"linear CKA: {a} (rows) × {b} (columns)", grid, meaning="linear CKA of the two streams' token states",
            unit="CKA", domain=(0.0, 1.0), axes=("stream_a", "stream_b"),
        )
    )  # fmt: skip
    if two:
        sec.add(
            figures.lines(
                "represent.cka_diag",
                "CKA at the same depth",
                [figures.Series("CKA", list(range(len(diag))), diag)],
                x_title=AXIS,
                y_title="CKA",
            )
        )
    else:
        nxt = [grid[i][i + 1] for i in range(len(grid) - 1)]
        sec.add(
            figures.lines(
                "represent.cka_next", "CKA of each stream with the next", [figures.Series("CKA(l, l + 1)", list(range(len(nxt))), nxt)],
                x_title=AXIS, y_title="CKA",
            )
        )  # fmt: skip


def _match(r: Report, result) -> None:
    t = result.table
    r.section("Summary", "summary").add(
        Text(
            items=[
                f"matched: mean correlation of the one-to-one (Hungarian) matching of units, over {result.meta['tokens']} tokens",
                "best: mean over model A's units of their best correlation in model B (not one-to-one)",
                f"shared groups: fraction of the {result.meta['groups']} spectral groups of both models' units that hold units of both",
            ]
        )
    )
    sec = r.section("Matching per layer", "curves")
    series = _series(t, "matched", name="matched") + _series(t, "best", name="best") + _series(t, "shared_groups", name="shared groups")
    sec.add(
        figures.lines(
            "represent.match", "unit correlation per layer", series, x_title=AXIS, y_title="correlation / fraction", reference=1.0
        )
    )


def _align(r: Report, result) -> None:
    t = result.table
    lines = [
        "group cosine: cos(mean state of group a, mean state of group b), mean over examples",
        "consecutive: cos(a token's state at stream l, at stream l + 1), mean over tokens",
    ]
    r.section("Summary", "summary").add(Text(items=lines))
    sec = r.section("Cosine per layer", "curves")
    cons = [x for x in t if x["consecutive"] is not None]
    series = _series(t, "group_cosine", name="group a vs group b") + _series(cons, "consecutive", name="stream l vs l + 1")
    sec.add(figures.lines("represent.align", "cosine per layer", series, x_title=AXIS, y_title="cosine", reference=1.0))


def build(result) -> Report:
    """The :class:`~attnlab.report.page.Report` of an :class:`attnlab.results.RepresentResult`."""
    meta, settings = result.meta, result.meta["settings"]
    method = settings["method"]
    models = " vs ".join(m["identity"] for m in meta["models"])
    r = Report(f"Represent: {TITLES[method]} of {models} on {settings.get('dataset')} ({settings['examples']} examples)", _provenance(meta))
    {"probe": _probe, "cka": _cka, "match": _match, "align": _align}[method](r, result)
    r.section("Settings", "settings").add(Table([[k, v] for k, v in settings.items()]))
    return r
