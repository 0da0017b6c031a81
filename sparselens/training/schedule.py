"""Learning-rate schedules: linear warm-up + cosine over global steps, and the ramp of a fresh optimiser."""

from __future__ import annotations

import math


def cosine_lr(step: int, peak: float, total: int, warmup: int, min_ratio: float) -> float:
    """Learning rate at global `step` (0-based) of a `total`-step warm-up + cosine schedule."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def ramp(local_step: int, steps: int) -> float:
    """Linear 0 -> 1 factor over the first `steps` steps of a stage that starts a fresh optimiser."""
    return 1.0 if steps <= 0 else min(1.0, (local_step + 1) / steps)
