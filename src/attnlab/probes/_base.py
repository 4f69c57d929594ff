"""Shared bookkeeping for probes: results accumulated per site."""

from __future__ import annotations

from typing import Any

from attnlab.core.site import site_matcher


class SiteProbe:
    """A probe that keeps one accumulator per site and observes only the sites it selects.

    Args:
        sites: which sites to observe: None (all), a name or glob, a list, or a predicate.
    """

    def __init__(self, sites=None):
        self._match = site_matcher(sites)
        self._acc: dict[str, Any] = {}

    def wants(self, site) -> bool:
        return self._match(site)

    def reset(self) -> None:
        """Forget everything observed so far."""
        self._acc.clear()
