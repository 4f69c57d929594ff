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

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass

from torch import nn

__all__ = ["Entry", "available", "get", "register"]


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


_REGISTRY: dict[str, Entry] = {}
_loaded = False


def register(name: str, *, paper: str, layout: str = "[B, T, C]", time: str = "O(T²)", memory: str = "O(T)"):
    """Class decorator: register a mechanism under ``name``. A duplicate name raises."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"mechanism {name!r} is registered twice: {_REGISTRY[name].cls.__module__} and {cls.__module__}")
        _REGISTRY[name] = Entry(name, cls, paper, layout, time, memory)
        return cls

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")


def available() -> list[Entry]:
    """Every registered mechanism, sorted by name."""
    _load()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get(name: str, *, dim: int, heads: int, **options) -> nn.Module:
    """Build the mechanism ``name`` for model width ``dim`` with ``heads`` heads.

    Unknown names raise ``ValueError`` listing the closest valid ones; unknown options raise
    ``TypeError`` listing the options the mechanism takes.
    """
    _load()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown mechanism {name!r}{hint}: valid names are {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name].cls
    params = inspect.signature(cls).parameters
    valid = [p for p in params if p not in ("self", "dim", "heads")]
    bad = [k for k in options if k not in params]
    if bad and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"mechanism {name!r} has no option {', '.join(map(repr, bad))}: its options are {', '.join(valid) or 'none'}")
    return cls(dim=dim, heads=heads, **options)
