"""The monitor's decision rule, pure: this run's log time ratios (champion / dense, one per alternating sample)
against the history's, and the deterministic numbers against the last good run's.

Per timed metric (prefill ms, decode ms per token), with p the two-sided Mann-Whitney p-value and
change = exp(median(now) - median(history)) - 1:
- `baseline`: fewer than 2 history samples (nothing to compare against yet);
- `regressed`: p < regress_p and change >= regress_ratio - 1 (the champion got that much slower relative to dense);
- `same`: p > same_p, or |change| < same_ratio - 1;
- `improved`: p < regress_p and change <= 1 / regress_ratio - 1;
- otherwise undecided: the monitor measures one more batch and decides again on all of this run's samples;
  still undecided is `inconclusive`.
Deterministic numbers (held-out loss on fixed samples, cache bytes per position) are `same` when equal (the loss
within loss_rtol, relative), else `changed`. The run's overall verdict is the worst of its metrics in the order
regressed (a `changed` deterministic number counts as one) > inconclusive > improved > same > baseline.
"""

from __future__ import annotations

import math

import numpy as np

from sparselens.config import MonitorConfig
from sparselens.stats import mann_whitney_p

RULE_VERSION = "monitor-rule/1"
UNDECIDED = "undecided"
ORDER = ("baseline", "same", "improved", "inconclusive", "regressed")  # overall: the last one present wins
RULE = __doc__.split("\n", 3)[3].strip()


def decide_timing(now: np.ndarray, history: np.ndarray, cfg: MonitorConfig) -> dict:
    """Verdict, p_value, change, n_current, n_history for one metric's log ratios (see the module docstring)."""
    now, history = np.asarray(now, dtype=np.float64), np.asarray(history, dtype=np.float64)
    out = {"p_value": math.nan, "change": math.nan, "n_current": int(now.size), "n_history": int(history.size)}
    if history.size < 2 or now.size < 1:
        return out | {"verdict": "baseline"}
    p = mann_whitney_p(now, history)
    change = math.exp(float(np.median(now) - np.median(history))) - 1
    out |= {"p_value": p, "change": change}
    if p < cfg.regress_p and change >= cfg.regress_ratio - 1:
        return out | {"verdict": "regressed"}
    if p > cfg.same_p or abs(change) < cfg.same_ratio - 1:
        return out | {"verdict": "same"}
    if p < cfg.regress_p and change <= 1 / cfg.regress_ratio - 1:
        return out | {"verdict": "improved"}
    return out | {"verdict": UNDECIDED}


def decide_deterministic(now: dict[str, float], before: dict[str, float] | None, cfg: MonitorConfig) -> dict:
    """`same` when the held-out loss (within loss_rtol) and the cache bytes equal the last good run's, else
    `changed`; `baseline` without one. change = the loss's relative difference."""
    out = {"p_value": math.nan, "change": math.nan, "n_current": len(now), "n_history": len(before or {})}
    if not before:
        return out | {"verdict": "baseline"}
    change = now["heldout_loss"] / before["heldout_loss"] - 1
    same = abs(change) <= cfg.loss_rtol and now["cache_bytes_per_token"] == before["cache_bytes_per_token"]
    return out | {"change": change, "verdict": "same" if same else "changed"}


def overall(verdicts: list[str]) -> str:
    """The run's verdict from its metrics' verdicts (`changed` counts as `regressed`)."""
    ranks = [ORDER.index("regressed" if v == "changed" else v) for v in verdicts]
    return ORDER[max(ranks, default=0)]
