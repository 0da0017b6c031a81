"""Learning-rate schedules: global warm-up + cosine, the ramp of a fresh optimiser, and each stage's lr factors."""

from __future__ import annotations

import math

from sparselens.config import TrainConfig
from sparselens.training.stages import StageSpec


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


def stage_lr_factors(spec: StageSpec, train: TrainConfig, local: int) -> dict[str, float]:
    """Factor on each trained role's peak lr ("main": train.lr, "indexer": train.indexer_lr) at a stage's step.

    Each stage ramps exactly once:
    - a stage that trains the main model (pretrain, dense_continue, sparse) follows the global warm-up + cosine
      over `train.total_steps` at its global position; a continuation stage's fresh AdamW multiplies that by one
      linear ramp over `resume_warmup_steps`. In the sparse stage the indexer (its AdamW state fresh as well)
      shares this factor on its own peak, so it anneals together with the model whose attention it tracks.
    - a stage with `own_schedule` (Phase 3 fine-tuning, after the recipe's last step) follows its own warm-up +
      cosine over its steps, for every role it trains;
    - the indexer-only warm-up follows its own warm-up (`resume_warmup_steps`) + cosine over its W steps; that
      warm-up is its ramp, so nothing multiplies it.
    """
    if spec.own_schedule:
        factor = cosine_lr(local, 1.0, spec.steps, train.resume_warmup_steps, train.min_lr_ratio)
    elif spec.train_main:
        factor = cosine_lr(spec.first_step + local, 1.0, train.total_steps, train.lr_warmup_steps, train.min_lr_ratio)
        if spec.fresh_optimizer:
            factor *= ramp(local, train.resume_warmup_steps)
    else:
        factor = cosine_lr(local, 1.0, spec.steps, train.resume_warmup_steps, train.min_lr_ratio)
    roles = [role for role, on in (("main", spec.train_main), ("indexer", spec.train_indexer)) if on]
    return dict.fromkeys(roles, factor)
