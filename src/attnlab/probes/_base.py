"""Shared pieces of probes: per-site accumulators, per-input hooks, a registry, and the report form."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from attnlab.core.site import Site, site_matcher

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a probe available to ``attnlab scan --probes`` under ``name``."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"probe {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    """Registered probe names, sorted."""
    _load()
    return sorted(_REGISTRY)


def get(name: str, **options) -> SiteProbe:
    """A new probe by name; unknown names raise a ``ValueError`` listing the valid ones."""
    _load()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown probe {name!r}{hint}: choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def _load() -> None:
    import attnlab.probes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"attnlab.probes.{info.name}")


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


class SiteProbe:
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
