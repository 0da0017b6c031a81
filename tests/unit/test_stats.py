"""Intervals: Wilson against its closed form, paired bootstrap covers and orders, timing summaries."""

import math

import numpy as np
import pytest

from sparselens.stats import mann_whitney_p, mean_interval, median_iqr, paired_bootstrap, wilson


def test_wilson_matches_known_values_and_edges():
    iv = wilson(9, 10)
    assert iv.value == 0.9 and iv.n == 10
    assert iv.low == pytest.approx(0.5958, abs=1e-4) and iv.high == pytest.approx(0.9821, abs=1e-4)
    assert wilson(0, 20).low == 0.0 and wilson(20, 20).high == 1.0 and wilson(20, 20).low < 1.0
    assert math.isnan(wilson(0, 0).value)
    with pytest.raises(ValueError, match="successes"):
        wilson(5, 3)


def test_paired_bootstrap_sees_a_consistent_small_difference_that_unpaired_spread_hides():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 3.0, size=40)  # samples differ a lot from each other ...
    other = base * 1.01 + rng.normal(0, 0.001, size=40)  # ... but the second model is 1% worse on every one
    iv = paired_bootstrap(other, base, "ratio", resamples=2000)
    assert iv.low > 1.0 and iv.contains(1.01) and iv.n == 40
    assert paired_bootstrap(base, base, "diff").value == 0.0
    same = paired_bootstrap(base + rng.normal(0, 0.05, 40), base, "diff")
    assert same.low < 0 < same.high


def test_mean_interval_median_iqr_and_mann_whitney():
    iv = mean_interval(np.array([1.0, 2.0, 3.0, 4.0]))
    assert iv.value == 2.5 and iv.low < 2.5 < iv.high
    summary = median_iqr(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert summary["median"] == 3.0 and summary["q25"] == 2.0 and summary["n"] == 5
    assert mann_whitney_p(np.arange(20.0), np.arange(20.0) + 100) < 1e-6
    assert mann_whitney_p(np.arange(20.0), np.arange(20.0)) > 0.5
