"""Confidence intervals: t quantiles and the mean ± 95% CI used for seeds and paired edits."""

import math

import pytest

from attnlab.stats import mean_ci, t_quantile


def test_t_quantiles_match_known_values():
    assert t_quantile(1) == 12.706 and t_quantile(4) == 2.776 and t_quantile(30) == 2.042
    assert abs(t_quantile(60) - 2.0003) < 1e-3 and abs(t_quantile(120) - 1.9799) < 1e-3
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1"):
        t_quantile(0)


def test_mean_ci_by_hand():
    e = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sd sqrt(2.5), t(4) = 2.776
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert e.mean == 3 and abs(e.high - 3 - half) < 1e-12 and abs(3 - e.low - half) < 1e-12
    assert math.isnan(mean_ci([1.0]).low) and mean_ci([]).n == 0
    assert mean_ci([2.0, float("nan"), 4.0]).mean == 3  # NaN (e.g. a diverged seed's metric) is left out
