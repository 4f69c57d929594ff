"""Shared pieces of probes: per-site accumulators, per-input hooks, a registry, and the report form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from attnlab.core.site import Probe, Site, site_matcher
from attnlab.registry import Registry

registry = Registry("probe", "attnlab.probes")


def register(name: str, *, paper: str):
    """Class decorator: make a probe available to ``attnlab scan --probes`` under ``name``.

    ``paper``: the PAPERS.md numbers it comes from, as text (``"68, 47, 12"``).
    """
    return registry.register(name, paper=paper)


def names() -> list[str]:
    """Registered probe names, sorted."""
    return registry.names()


def get(name: str, **options) -> SiteProbe:
    """A new probe by name; unknown names raise a ``ValueError`` listing the valid ones."""
    return registry.create(name, **options)


@dataclass
class Findings:
    """What a probe shows in a report: plain data, JSON-ready, keyed by stable ids.

    An id is a short snake_case name (``"first_token_mass"``, ``"retrieval_heads"``); with the
    probe's name it is the finding's full id (``sink.first_token_mass``), which code uses to find
    it. What a report prints is its title (``titles[id]``, the id itself when there is none).

    Attributes:
        heatmaps: id -> ``[layer][head]`` values.
        bars: id -> one value per layer.
        tables: id -> rows (dicts with the same keys; ``layer``, ``head``, ``position`` and
            ``token`` cells locate a row).
        notes: sentences that say what was found.
        titles: id -> display title.

    A value that was not measured (a layer or site the probe never observed, a statistic that is
    undefined on the inputs seen) is ``float("nan")``, never a made-up 0: results files write it
    as ``null`` and list its path in ``meta.non_finite`` (:mod:`attnlab.results`), and reports
    draw it as missing.

    Example:
        >>> f = Findings().heatmap("first_token_mass", "first-token mass", [[0.9, 0.1]])
        >>> f.heatmaps, f.title("first_token_mass")
        ({'first_token_mass': [[0.9, 0.1]]}, 'first-token mass')
    """

    heatmaps: dict[str, list[list[float]]] = field(default_factory=dict)
    bars: dict[str, list[float]] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)

    def heatmap(self, id: str, title: str, values: list[list[float]]) -> Findings:
        """Add a ``[layer][head]`` heatmap under ``id``; returns self."""
        return self._add(self.heatmaps, id, title, values)

    def bar(self, id: str, title: str, values: list[float]) -> Findings:
        """Add one value per layer under ``id``; returns self."""
        return self._add(self.bars, id, title, values)

    def table(self, id: str, title: str, rows: list[dict]) -> Findings:
        """Add a table (rows with the same keys) under ``id``; returns self."""
        return self._add(self.tables, id, title, rows)

    def title(self, id: str) -> str:
        """The display title of ``id``."""
        return self.titles.get(id, id)

    def _add(self, where: dict, id: str, title: str, value) -> Findings:
        if not id.isidentifier() or id != id.lower():
            raise ValueError(f"finding id {id!r} is not a snake_case name: give an id like 'first_token_mass' and the title apart")
        if id in self.heatmaps or id in self.bars or id in self.tables:
            raise ValueError(f"finding id {id!r} is used twice: every heatmap, bar chart and table of a probe needs its own id")
        where[id] = value
        self.titles[id] = title
        return self


class SiteProbe(Probe):
    """A probe that keeps one accumulator per site and observes only the sites it selects.

    Scans also call :meth:`begin` before and :meth:`end` after each input, and
    :meth:`findings` for the report.

    Args:
        sites: which sites to observe: None (all), a name or glob, a list, or a predicate.
    """

    name = ""
    min_tokens: int = 1  # shortest input whose statistics mean something; scans warn below it
    min_tokens_reason: str = ""  # why, for the warning

    def __init__(self, sites=None):
        self._match = site_matcher(sites)
        self._acc: dict[str, Any] = {}
        self.input_ids: Tensor | None = None
        self.tokens: list[str] = []

    def wants(self, site) -> bool:
        return self._match(site)

    def reset(self) -> None:
        """Forget everything observed so far."""
        self._acc.clear()

    def begin(self, input_ids: Tensor, tokens: list[str]) -> None:
        """Before an input: its ids ``[B, T]`` and the token strings of the first sequence."""
        self.input_ids, self.tokens = input_ids, tokens

    def end(self) -> None:
        """After an input: fold per-input statistics into the totals (default: nothing to do)."""

    def findings(self, sites: list[Site]) -> Findings:
        """Heatmaps, bars, tables and notes for a report, over ``sites`` (in layer order)."""
        return Findings()


def kv_group(site: Site, head: int) -> int:
    """The key/value head a query head reads under GQA (the head itself without GQA)."""
    if not site.num_heads or not site.num_kv_heads:
        return head
    return head // (site.num_heads // site.num_kv_heads)


def grid(values: dict[str, Tensor], sites: list[Site]) -> list[list[float]]:
    """Per-site ``[H]`` tensors as a ``[layer][head]`` list (missing sites become empty rows; undefined cells NaN)."""
    return [[float(x) for x in values[s.name]] if s.name in values else [] for s in sites]
