"""Operators from the papers that are neither an attention mechanism nor a probe or edit: one file each.

A seed paper's contribution is sometimes a small module or function around attention rather than
attention itself: a modality gate, an information bottleneck, a fusion layer, a loss on attention
maps, a scoring or analysis function. Each lives here in its own module, registered by name with
its PAPERS.md number, so ``attnlab list operators`` and docs/papers.md show it:

    >>> from attnlab import operators
    >>> "consciousness_bottleneck" in operators.names()  # doctest: +SKIP
    True

Registered entries are ``nn.Module`` classes or plain functions; :func:`get` returns the entry
itself (build a module with its own arguments), so a function's signature stays its own.
"""

from __future__ import annotations

from attnlab.registry import Registry

__all__ = ["get", "names", "register", "registry"]

registry = Registry("operator", "attnlab.operators")
register = registry.register


def names() -> list[str]:
    """Registered operator names, sorted."""
    return registry.names()


def get(name: str):
    """The operator registered as ``name`` (a class or function); an unknown name raises ``ValueError`` with the closest ones."""
    return registry.lookup(name)
