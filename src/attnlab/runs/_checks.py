"""Checks every run shares: inputs within the trained positions, finite measurements.

- :func:`check_positions`: refuse inputs longer than the positions the model was trained on
  (``config.max_position_embeddings``) unless ``allow_extrapolation`` (``--allow-extrapolation``).
- :func:`check_finite`: refuse a measurement with non-finite values, naming what broke it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["NonFiniteError", "check_finite", "check_positions", "trained_positions"]


class NonFiniteError(ValueError):
    """A measurement came out NaN or infinite: the model's outputs (or an edit of them) broke."""


def trained_positions(model) -> int | None:
    """``config.max_position_embeddings`` of ``model``, or None when it does not say."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def check_positions(model, tokens: int, what: str, allow_extrapolation: bool) -> None:
    """Raise ``ValueError`` when ``what`` (``tokens`` positions long) exceeds the model's trained positions.

    Example:
        >>> check_positions(None, 10**6, "max_len 1000000", False)  # no config: nothing to check
    """
    trained = trained_positions(model)
    if trained and tokens > trained and not allow_extrapolation:
        raise ValueError(
            f"{what} exceeds the {trained} positions the model was trained on: "
            "pass allow_extrapolation=True (--allow-extrapolation) to measure beyond them"
        )


def check_finite(values: Sequence[float], what: str, unit: str, why: str) -> None:
    """Raise :class:`NonFiniteError` when any of ``values`` is NaN or infinite.

    Args:
        values: one number per example.
        what: what was measured (``"perplexity after head_scale:factor=1e30"``).
        unit: what one example is, plural (``"windows"``).
        why: what it means and how to fix it.

    Example:
        >>> check_finite([1.0, float("inf")], "perplexity", "windows", "the model's outputs overflow")
        Traceback (most recent call last):
        ...
        attnlab.runs._checks.NonFiniteError: perplexity is inf on 1 of 2 windows: the model's outputs overflow
    """
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        kinds = sorted({"nan" if math.isnan(v) else "inf" if v > 0 else "-inf" for v in bad})
        raise NonFiniteError(f"{what} is {' or '.join(kinds)} on {len(bad)} of {len(values)} {unit}: {why}")
