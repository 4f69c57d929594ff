"""Checks of the options mechanisms share: positive sizes, heads dividing the width, a form from a list."""

from __future__ import annotations

__all__ = ["positive_ints"]


def positive_ints(**values) -> None:
    """A ``ValueError`` naming the first of ``values`` that is not a positive int (bools are not ints here)."""
    for name, n in values.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={n!r}")
