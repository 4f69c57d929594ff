"""Means with 95% confidence intervals: the statistics attnlab reports for seeds and paired edits.

Quantiles come from :mod:`scipy.stats` (Student's t), not from a table of our own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = ["Estimate", "mean_ci", "t_quantile"]


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``).

    Example:
        >>> round(t_quantile(4), 3)
        2.776
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got df={df}: a confidence interval needs at least 2 values")
    if not 0 < level < 1:
        raise ValueError(f"level is a probability between 0 and 1, got level={level}: e.g. 0.95 for a 95% interval")
    return float(stats.t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Estimate:
    """A mean and its 95% confidence interval (``low``/``high`` are NaN for fewer than 2 values)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {(self.high - self.low) / 2:.2g}"


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean with a two-sided 95% t-interval (for seeds, or paired before/after differences).

    NaN values (a diverged seed's metric) are left out.

    Example:
        >>> str(mean_ci([1.0, 2.0, 3.0]))
        '2 ± 2.5'
    """
    xs = [float(v) for v in values if not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    m = math.fsum(xs) / n
    if n < 2:
        return Estimate(m, float("nan"), float("nan"), n)
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Estimate(m, m - half, m + half, n)
