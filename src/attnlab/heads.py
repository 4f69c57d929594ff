"""Heads written ``L{layer}H{head}``: the one reader every command and API uses (``--maps``, edits' ``heads=``, circuits' senders).

>>> parse_heads("L18H6, l17h3")
[(18, 6), (17, 3)]
>>> parse_heads(["L2H1", (0, 3), "L2H1"], layers=4, n_heads=4)
[(2, 1), (0, 3)]
"""

from __future__ import annotations

import re

__all__ = ["parse_heads"]

_HEAD = re.compile(r"[Ll](\d+)[Hh](\d+)")


def _items(x) -> list:
    """``x`` as a list of single heads: a string splits on commas; a pair of ints is one head."""
    if x is None:
        return []
    if isinstance(x, str):
        return [p.strip() for p in x.split(",") if p.strip()]
    if isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, int) for v in x):
        return [x]
    if isinstance(x, (list, tuple, range)):
        return [p for item in x for p in (_items(item) if isinstance(item, str) else [item])]
    return [x]


def parse_heads(x, layers: int | None = None, n_heads: int | None = None) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs, in order and once each, from ``"L18H6,L17H3"``, ``["L18H6", (17, 3)]`` or ``(18, 6)``.

    ``layers`` and ``n_heads``, when given, bound them: a head outside the model raises a
    ``ValueError`` naming the valid range, as does anything not written ``L{layer}H{head}``.
    """
    out = []
    for item in _items(x):
        if isinstance(item, tuple) and len(item) == 2 and all(isinstance(v, int) for v in item):
            layer, head = item
        elif m := _HEAD.fullmatch(str(item).strip()):
            layer, head = int(m[1]), int(m[2])
        else:
            raise ValueError(
                f"cannot read the head {item!r}: write a head as L<layer>H<head> (e.g. L18H6; several comma-separated) or as a (layer, head) pair"
            )
        if (layers is not None and not 0 <= layer < layers) or (n_heads is not None and not 0 <= head < n_heads):
            bounds = f"layers 0..{layers - 1}" if layers is not None else ""
            bounds += (" and " if bounds and n_heads is not None else "") + (
                f"heads 0..{n_heads - 1} per layer" if n_heads is not None else ""
            )
            raise ValueError(f"the head L{layer}H{head} does not exist: the model has {bounds}")
        out.append((layer, head))
    return list(dict.fromkeys(out))
