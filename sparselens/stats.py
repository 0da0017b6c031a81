"""Intervals and tests for the numbers sparselens reports: Wilson intervals for accuracies, paired bootstrap for
differences and ratios of per-sample losses, medians with IQR for timings, Mann-Whitney for timing histories.

Every function states its n and returns plain floats, so tables carry (value, low, high, n) side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval and the number of units it rests on."""

    value: float
    low: float
    high: float
    n: int

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        return {
            f"{prefix}value": self.value,
            f"{prefix}low": self.low,
            f"{prefix}high": self.high,
            f"{prefix}n": self.n,
        }


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Accuracy successes / n with the Wilson score interval (sensible at 0, 1 and small n); n = 0 gives NaNs."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, where rounding leaves 1 - 1e-16
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, n)


def mean_interval(values: np.ndarray, z: float = Z95) -> Interval:
    """Mean of per-sample values with a normal-approximation interval (t would be wider below ~10 samples)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if x.size == 1:
        return Interval(float(x[0]), math.nan, math.nan, 1)
    half = sps.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half), int(x.size))


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, kind: str = "ratio", resamples: int = 1000, seed: int = 0
) -> Interval:
    """Paired bootstrap over samples of mean(a) / mean(b) ("ratio") or mean(a) - mean(b) ("diff").

    a[i] and b[i] are the same sample under two models (e.g. per-sample mean loss), so the interval reflects how
    the comparison varies with the samples drawn, not each model's own spread. Percentile interval, n = samples.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be two 1-d arrays of one length, got {a.shape} and {b.shape}")
    if kind not in ("ratio", "diff"):
        raise ValueError(f"kind={kind!r}: use 'ratio' or 'diff'")
    if a.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)

    def stat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x.mean(-1) / y.mean(-1) if kind == "ratio" else x.mean(-1) - y.mean(-1)

    value = float(stat(a, b))
    if a.size == 1:
        return Interval(value, math.nan, math.nan, 1)
    rows = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))  # [R, n]
    draws = stat(a[rows], b[rows])  # [R]
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(value, float(low), float(high), int(a.size))


def median_iqr(values: np.ndarray) -> dict[str, float | int]:
    """Median, 25th/75th and 90th percentiles of timings (ms), with n."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no timings to summarise: time at least one repeat")
    q25, q50, q75, q90 = np.percentile(x, [25, 50, 75, 90])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "p90": float(q90), "n": int(x.size)}


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value that a and b come from one distribution (NaN when either is empty)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
