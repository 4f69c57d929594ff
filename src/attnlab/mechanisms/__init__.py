"""Attention mechanisms from the papers, one file each, registered by a short name.

A mechanism is an ``nn.Module`` in its own file in this package, decorated with
:func:`register`. Every module of the package is imported on first use of the registry, so a
new mechanism needs no change anywhere else.

    >>> from attnlab import mechanisms
    >>> m = mechanisms.get("mha", dim=64, heads=4)            # doctest: +SKIP
    >>> m(torch.randn(2, 10, 64)).shape                       # doctest: +SKIP
    torch.Size([2, 10, 64])
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from attnlab.registry import Registry

__all__ = ["Entry", "available", "get", "register", "registry"]


@dataclass(frozen=True)
class Entry:
    """A registered mechanism.

    Attributes:
        name: short lower-case name (``"neighborhood"``).
        cls: the module class (or a factory returning a module).
        paper: PAPERS.md number(s), as text (``"42"``; ``""`` for baselines).
        layout: input layout, ``"[B, T, C]"`` or ``"[B, H, W, C]"``.
        time: time complexity in tokens ``T`` (``"O(T²)"``, ``"O(T·k)"``).
        memory: memory complexity.
    """

    name: str
    cls: type[nn.Module]
    paper: str
    layout: str
    time: str
    memory: str

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.split("\n\n")[0].replace("\n", " ")


registry = Registry("mechanism", __name__)


def register(name: str, *, paper: str, layout: str = "[B, T, C]", time: str = "O(T²)", memory: str = "O(T)"):
    """Class decorator: register a mechanism under ``name``. A duplicate name raises."""
    return registry.register(name, paper=paper, layout=layout, time=time, memory=memory)


def available() -> list[Entry]:
    """Every registered mechanism, sorted by name."""
    return [Entry(n, c, c.paper, c.layout, c.time, c.memory) for n in registry.names() for c in [registry.lookup(n)]]


def get(name: str, *, dim: int, heads: int, **options) -> nn.Module:
    """Build the mechanism ``name`` for model width ``dim`` with ``heads`` heads.

    Unknown names raise ``ValueError`` listing the closest valid ones; unknown options raise
    ``TypeError`` listing the options the mechanism takes.
    """
    return registry.create(name, given=("dim", "heads"), dim=dim, heads=heads, **options)
