"""One report page for every kind: a :class:`Report` of sections holding texts, tables and figures.

Every attnlab report (scan, edit, sweep, circuit) is a :class:`Report` rendered by :func:`Report.html`
with the one template and stylesheet in ``report/templates``. Figures are Vega-Lite specs
(made with altair, :mod:`attnlab.report.figures`); the page inlines the vega, vega-lite and
vega-embed JavaScript once (from ``vl-convert-python``), so it works offline and makes no network
request. Each drawn view is reachable as ``window.attnlabViews[name]`` once
``window.attnlabReady`` resolves (what the browser tests use).

A new kind of report is a few lines:

    >>> from attnlab.report import figures
    >>> r = Report("Circuit: IOI", meta=["smollm2-135m · 30 layers"])
    >>> r.section("Heads").add(figures.heatmap("ioi", "name-mover score", [[0.1, 0.9]], meaning="attention to the indirect object"))  # doctest: +ELLIPSIS
    Section(...)
    >>> html = r.html()
    >>> html.startswith("<!doctype html>") and html.count("vegaEmbed(el") == 1
    True
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment
from markupsafe import Markup

__all__ = ["FIGURE_FORMATS", "Figure", "Report", "Section", "Table", "Text", "check_formats"]

FIGURE_FORMATS = ("png", "svg")


@dataclass
class Text:
    """A paragraph (``text``), or a bulleted list (``items``); ``meta`` sets it in the grey meta style."""

    text: str = ""
    items: Sequence[str] = ()
    meta: bool = False
    kind: str = "text"


@dataclass
class Table:
    """A table: ``header`` (empty: the first cell of each row is its heading) and rows of cells.

    ``collapsed``: None shows it plainly (under ``title`` if any); True/False put it in a
    ``<details>`` block, closed/open, with ``title`` and the row count as its summary.
    """

    rows: Sequence[Sequence[Any]]
    header: Sequence[str] = ()
    title: str = ""
    collapsed: bool | None = None
    kind: str = "table"


@dataclass
class Figure:
    """A figure: a Vega-Lite ``spec`` (a dict, as altair's ``Chart.to_dict()`` gives) under a stable ``name``.

    ``name`` is its id in the page (``window.attnlabViews[name]``) and its file name when exported
    (``figures/<name>.png``); ``title`` and ``caption`` are printed above it.
    """

    name: str
    title: str
    spec: dict
    caption: str = ""
    kind: str = "figure"


@dataclass
class Section:
    """A titled part of a report; ``id`` is its anchor (``#section-<id>``)."""

    title: str
    id: str
    items: list = field(default_factory=list)

    def add(self, *items: Text | Table | Figure) -> Section:
        """Append texts, tables or figures; returns self."""
        self.items.extend(items)
        return self


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def check_formats(formats: Sequence[str]) -> list[str]:
    """``formats`` as a list of figure file formats, or a ``ValueError`` naming the one not known."""
    out = [f.strip().lower() for f in formats if f.strip()]
    bad = [f for f in out if f not in FIGURE_FORMATS]
    if bad:
        raise ValueError(f"unknown figure format {bad[0]!r}: choose from {', '.join(FIGURE_FORMATS)} (e.g. --figures png,svg)")
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=1)
def _javascript() -> str:
    """vega, vega-lite and vega-embed as one script (from vl-convert-python: no network)."""
    import altair as alt
    import vl_convert

    js = vl_convert.javascript_bundle(vl_version=".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]))
    return js.replace("</script", "<\\/script")  # inside a <script> element


@functools.lru_cache(maxsize=1)
def _template():
    files = resources.files("attnlab.report") / "templates"
    env = Environment(autoescape=True, trim_blocks=True)
    return env.from_string((files / "report.html.j2").read_text(encoding="utf-8")), (files / "report.css").read_text(encoding="utf-8")


def _json_for_script(data) -> str:
    """JSON that can sit inside a ``<script>`` element (no ``</``, no non-finite numbers)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


@dataclass
class Report:
    """A report page: ``title``, ``meta`` lines (provenance, in grey) and :class:`Section` s.

    Example:
        >>> r = Report("Edit: head_mask", meta=["smollm2-135m"])
        >>> r.section("Summary").add(Text("perplexity rose by 3%.")).id
        'summary'
    """

    title: str
    meta: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str, id: str | None = None) -> Section:
        """A new section at the end (``id``: its anchor, default from the title)."""
        s = Section(title, id or _slug(title))
        self.sections.append(s)
        return s

    def figures(self) -> list[Figure]:
        """Every figure, in page order."""
        return [x for s in self.sections for x in s.items if isinstance(x, Figure)]

    def html(self, *, standalone: bool = True) -> str:
        """The page as HTML: a whole document, or (``standalone=False``) a fragment for a notebook cell.

        The JavaScript is inlined once, and only when there is a figure to draw.
        """
        figures = self.figures()
        names = [f.name for f in figures]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"two figures of the report {self.title!r} are named {dup!r}: give each figure its own name")
        template, css = _template()
        specs = Markup(_json_for_script({f.name: f.spec for f in figures})) if figures else ""
        return template.render(r=self, css=Markup(css), js=Markup(_javascript()) if figures else "", specs=specs, standalone=standalone)

    def figure_files(self, formats: Sequence[str]) -> dict[str, bytes | str]:
        """Every figure drawn without a browser (vl-convert) as ``{"<name>.<format>": data}`` (png, svg).

        An interactive figure is drawn as it first appears (the attention viewer: its first head).
        """
        import vl_convert

        out: dict[str, bytes | str] = {}
        for fmt in check_formats(formats):
            for f in self.figures():
                out[f"{f.name}.{fmt}"] = vl_convert.vegalite_to_png(f.spec, scale=2) if fmt == "png" else vl_convert.vegalite_to_svg(f.spec)
        return out

    def write_figures(self, folder: str | Path, formats: Sequence[str]) -> list[Path]:
        """Write every figure as ``folder/<name>.<format>``, all drawn first, then written together."""
        from attnlab.results import write_together

        return write_together({Path(folder) / name: data for name, data in self.figure_files(formats).items()})
