"""Regenerate docs/support.md, the support matrix, from the code itself.

Every probe and edit declares where it applies on its class (:class:`attnlab.core.site.Support`:
``kinds``, ``needs``, ``with_sliding_window``, ``with_softcap``, ``caveat``), and every evaluation
in :data:`attnlab.runs.evaluate.METRICS` its ``kinds`` and ``needs``; this script renders them as
one table per section. ``tests/test_docs.py`` fails when the page is out of date.

A new family of methods (circuits, representations) is one more entry of :data:`SECTIONS`: a
title, a sentence, and a function that returns its rows.

Usage: python docs/support.py
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "support.md"
YES, NO = "✓", "✗"


class Row(NamedTuple):
    """One method: its name, paper, what it is, and where it applies."""

    name: str
    paper: str
    what: str
    kinds: frozenset[str]
    sliding_window: bool
    softcap: bool
    note: str


def _first_line(cls) -> str:
    return (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")


def _declared(registry) -> list[Row]:
    """A row per registered class, from its :class:`~attnlab.core.site.Support` attributes."""
    rows = []
    for name in registry.names():
        cls = registry.lookup(name)
        note = "; ".join(x for x in (f"it {cls.needs}" if cls.needs else "", cls.caveat) if x)
        rows.append(Row(name, cls.paper, _first_line(cls), cls.kinds, cls.with_sliding_window, cls.with_softcap, note))
    return rows


def probes() -> list[Row]:
    from attnlab.probes import registry

    return _declared(registry)


def edits() -> list[Row]:
    from attnlab.edits import registry

    return _declared(registry)


def evaluations() -> list[Row]:
    """A row per evaluation: they read the model's outputs, never its attention, so any window or cap is the model's own."""
    from attnlab.runs.evaluate import METRICS

    return [Row(name, "", m.what, m.kinds, True, True, f"it {m.needs}") for name, m in METRICS.items()]


SECTIONS: list[tuple[str, str, Callable[[], list[Row]]]] = [
    ("Probes", "`attnlab scan --probes`, `attnlab.scan(probes=...)`: observers of attention at every site.", probes),
    ("Edits", "`attnlab edit --edit`: training-free changes of attention at chosen sites.", edits),
    (
        "Evaluations",
        "`attnlab edit --eval`: what an edit is measured by, before and after. They read the model's outputs, "
        "never its attention, so a sliding window or a soft cap is part of the model they measure.",
        evaluations,
    ),
]
"""``(title, what the section holds, rows)`` per family of methods, in page order."""

INTRO = """# Support matrix

Which probes, edits and evaluations apply to which models. Columns:

- **decoder**: a causal LM (Llama, Qwen2, Mistral, Gemma 1–3, GPT-2; next-token logits).
- **encoder**: a bidirectional encoder without an LM head (BERT; hidden states only).
- **sliding window**: models whose layers (some or all) attend through a sliding window (Mistral,
  Gemma 2 and 3): the site's mask hides the keys outside the window.
- **softcap**: models that soft-cap attention logits (Gemma 2: `c·tanh(s/c)`). The model adapter
  applies the cap as the first logit-stage edit of the site, so attached edits act on the capped
  logits the model computes (a knockout's `−∞` stays `−∞`); probes see the capped probabilities.

✓: applies and is right there. ✗: does not apply, or is not what its paper defines there (the note
says why). Runs read these declarations: by default `attnlab scan` and `attnlab edit` skip what does
not apply to the model's kind, with a line saying why (recorded in `meta.skipped` of results.json),
and refuse it when it is asked for by name.

This page is generated from the declarations in the code (`kinds`, `needs`, `with_sliding_window`,
`with_softcap`, `caveat` on each probe and edit class; `kinds` and `needs` of each evaluation in
`attnlab.runs.evaluate.METRICS`): `python docs/support.py` rewrites it, and a test fails when it is
out of date.
"""


def _cell(ok: bool) -> str:
    return YES if ok else NO


def _text(s: str) -> str:
    """A table cell: pipes escaped, one line."""
    return s.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole page."""
    out = [INTRO]
    for title, blurb, rows in SECTIONS:
        out += [f"## {title}", "", blurb, "", "| name | paper | what it is | decoder | encoder | sliding window | softcap | note |"]
        out.append("|---|---|---|:-:|:-:|:-:|:-:|---|")
        for r in rows():
            cells = [f"`{r.name}`", r.paper, _text(r.what), _cell("decoder" in r.kinds), _cell("encoder" in r.kinds)]
            out.append("| " + " | ".join([*cells, _cell(r.sliding_window), _cell(r.softcap), _text(r.note)]) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    PAGE.write_text(render())
    sys.stdout.write(f"wrote {PAGE}\n")
