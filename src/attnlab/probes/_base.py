"""Shared pieces of probes: per-site accumulators, per-input hooks, a registry, and the report form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from attnlab.core.site import Probe, Site, site_matcher
from attnlab.registry import Registry

registry = Registry("probe", "attnlab.probes")


def register(name: str):
    """Class decorator: make a probe available to ``attnlab scan --probes`` under ``name``."""
    return registry.register(name)


def names() -> list[str]:
    """Registered probe names, sorted."""
    return registry.names()


def get(name: str, **options) -> SiteProbe:
    """A new probe by name; unknown names raise a ``ValueError`` listing the valid ones."""
    return registry.create(name, **options)


@dataclass
class Findings:
    """What a probe shows in a report: plain data, JSON-ready.

    Attributes:
        heatmaps: name -> ``[layer][head]`` values.
        bars: name -> one value per layer.
        tables: name -> rows (dicts with the same keys).
        notes: sentences that say what was found.
    """

    heatmaps: dict[str, list[list[float]]] = field(default_factory=dict)
    bars: dict[str, list[float]] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class SiteProbe(Probe):
    """A probe that keeps one accumulator per site and observes only the sites it selects.

    Scans also call :meth:`begin` before and :meth:`end` after each input, and
    :meth:`findings` for the report.

    Args:
        sites: which sites to observe: None (all), a name or glob, a list, or a predicate.
    """

    name = ""

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
    """Per-site ``[H]`` tensors as a ``[layer][head]`` list (missing sites become empty rows)."""
    return [[float(x) for x in values[s.name]] if s.name in values else [] for s in sites]
