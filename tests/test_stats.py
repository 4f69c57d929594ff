"""Confidence intervals: t quantiles (scipy.stats) and the mean ± 95% CI used for seeds and paired edits.

References are independent of scipy: closed forms of Student's t and printed table values.
"""

import math

import pytest

from attnlab.stats import mean_ci, t_quantile


def test_t_quantiles_match_closed_forms():
    # df=1 is Cauchy: tan(pi (p - 1/2)); df=2: (2p-1) sqrt(2 / (1 - (2p-1)^2)), p = 0.975
    assert t_quantile(1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
    assert t_quantile(2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)), rel=1e-12)
    assert t_quantile(1, level=0.5) == pytest.approx(1.0, rel=1e-12)  # Cauchy quartile


def test_t_quantiles_match_printed_tables():
    for df, printed in ((4, 2.776), (30, 2.042), (60, 2.000), (120, 1.980)):  # any t table, 3 decimals
        assert round(t_quantile(df), 3) == printed
    assert t_quantile(10**9) == pytest.approx(1.959964, abs=1e-6)  # tends to the normal quantile


def test_t_quantile_refuses_bad_arguments():
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1"):
        t_quantile(0)
    with pytest.raises(ValueError, match="level is a probability"):
        t_quantile(3, level=95)


def test_mean_ci_by_hand():
    e = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sd sqrt(2.5), t(4) = 2.776 (printed table)
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert e.mean == 3 and e.high - 3 == pytest.approx(half, abs=1e-3) and 3 - e.low == pytest.approx(half, abs=1e-3)
    assert math.isnan(mean_ci([1.0]).low) and mean_ci([]).n == 0
    assert mean_ci([2.0, float("nan"), 4.0]).mean == 3  # NaN (e.g. a diverged seed's metric) is left out


def test_mean_ci_of_two_values_is_cauchy_wide():
    e = mean_ci([0.0, 2.0])  # mean 1, sd sqrt(2), se 1, t(1) = tan(0.475 pi)
    assert (e.high - e.low) / 2 == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
