"""The four training stages and what each one trains.

Global steps: pre-training covers [0, D); the dense baseline continues over [D, D + W + S); the DSA model spends
[D, D + W) warming up its indexer (main model frozen, attention dense) and [D + W, D + W + S) in the sparse stage.
Batches depend on (seed, global step) only, so the dense baseline and the DSA model read the same data at the
same global step.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparselens.config import TrainConfig


@dataclass(frozen=True)
class StageSpec:
    model_name: str  # checkpoint namespace and final model name: "dense" or "dsa"
    stage: str  # "pretrain", "dense_continue", "warmup", "sparse"
    first_step: int  # global step of the stage's first step (data and main-model schedule position)
    steps: int
    mode: str | None  # forward mode of a DSA model: None (dense LM), "dense_kl" or "sparse_kl"
    train_main: bool  # main model parameters receive LM-loss updates
    train_indexer: bool  # indexer parameters receive KL updates
    fresh_optimizer: bool  # a new AdamW with a short linear ramp (continuation stages)
    own_schedule: bool = False  # warm-up + cosine over this stage's own steps (fine-tuning after the recipe)


def stage_specs(train: TrainConfig) -> dict[str, StageSpec]:
    d, w, s = train.dense_steps, train.warmup_steps, train.sparse_steps
    return {
        "pretrain": StageSpec("dense", "pretrain", 0, d, None, True, False, False),
        "dense_continue": StageSpec("dense", "dense_continue", d, w + s, None, True, False, True),
        "warmup": StageSpec("dsa", "warmup", d, w, "dense_kl", False, True, True),
        "sparse": StageSpec("dsa", "sparse", d + w, s, "sparse_kl", True, True, True),
    }


STAGE_ORDER = ("pretrain", "dense_continue", "warmup", "sparse")
