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

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.registry import Registry

__all__ = ["Entry", "available", "check_input_dtypes", "get", "register", "registry"]


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
    """Class decorator: register a mechanism under ``name``. A duplicate name raises.

    The class's ``forward`` first checks that its main input has the dtype of the module's
    parameters (:func:`check_input_dtypes`), so a float64 input to a float32 module
    says so instead of failing inside a matmul.
    """
    registered = registry.register(name, paper=paper, layout=layout, time=time, memory=memory)

    def deco(cls):
        forward = cls.__dict__.get("forward")
        if forward is not None and not getattr(forward, "_checks_dtypes", False):
            cls.forward = _checking_dtypes(forward)
        return registered(cls)

    return deco


def check_input_dtypes(module: nn.Module, names: list[str], args: tuple, kwargs: dict) -> None:
    """A ``TypeError`` if the main input (the first argument) is a float tensor whose dtype is not
    that of ``module``'s float parameters. Other inputs (e.g. another layer's probabilities) may differ.

    Skipped under autocast (which casts inside the ops) and for modules without float parameters.
    """
    arg = names[0] if names else "x"
    t = args[0] if args else kwargs.get(arg)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is None or t.dtype == param.dtype or torch.is_autocast_enabled(t.device.type):
        return
    raise TypeError(
        f"{type(module).__name__}: input {arg} is {t.dtype} but the module's parameters are {param.dtype}: "
        f"call module.to({t.dtype}) or cast the input with {arg}.to({param.dtype})"
    )


def _checking_dtypes(forward):
    names = list(inspect.signature(forward).parameters)[1:]  # without self

    @functools.wraps(forward)
    def checked(self, *args, **kwargs):
        check_input_dtypes(self, names, args, kwargs)
        return forward(self, *args, **kwargs)

    checked._checks_dtypes = True
    return checked


def available() -> list[Entry]:
    """Every registered mechanism, sorted by name."""
    return [Entry(n, c, c.paper, c.layout, c.time, c.memory) for n in registry.names() for c in [registry.lookup(n)]]


def get(name: str, *, dim: int, heads: int, **options) -> nn.Module:
    """Build the mechanism ``name`` for model width ``dim`` with ``heads`` heads.

    Unknown names raise ``ValueError`` listing the closest valid ones; unknown options raise
    ``TypeError`` listing the options the mechanism takes.
    """
    if not isinstance(name, str):
        raise TypeError(f"a mechanism name is a string such as 'mha', got {name!r}: valid mechanisms are {', '.join(registry.names())}")
    return registry.create(name, given=("dim", "heads"), dim=dim, heads=heads, **options)
