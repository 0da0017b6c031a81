"""The train and eval sections: the DSA training recipe and held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparselens.config.base import ConfigError
from sparselens.data.dataset import CONTENT_TYPES

DEFAULT_MIX = {"code": 0.35, "prose": 0.35, "assoc_recall": 0.1, "induction": 0.1, "brackets": 0.1}


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: dense pre-training, then DSA warm-up + sparse stage against an equal-step dense run.

    Step indices are global: the main model follows one warm-up + cosine schedule over
    `dense_steps + warmup_steps + sparse_steps`; the dense baseline continues through all of them, the DSA model
    spends the warm-up positions training only its indexer and the sparse positions training everything.
    Batches are a pure function of (seed, global step), so both models see the same data at the same step.
    """

    seq_len: int = 256  # T, training length in bytes
    batch_size: int = 16
    dense_steps: int = 500  # shared dense pre-training
    warmup_steps: int = 100  # DSA stage 1: only the indexer trains, KL to dense attention (plateaus by ~100)
    sparse_steps: int = 250  # DSA stage 2: top-k on, all parameters train (200 left prose at 1.035x dense)
    lr: float = 3e-3  # peak AdamW learning rate of the main model
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    lr_warmup_steps: int = 50  # linear warm-up at the start of pre-training
    resume_warmup_steps: int = 10  # linear warm-up of a fresh optimiser at the start of a continuation stage
    indexer_lr: float = 3e-3  # peak learning rate of the indexer (warm-up and sparse stage)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max gradient norm of the main model's parameters (clipped on the LM loss's gradient)
    indexer_grad_clip: float = 1.0  # max gradient norm of the indexers' parameters (their KL's gradient), apart
    checkpoint_every: int = 50  # steps between atomic checkpoints
    log_every: int = 10  # steps between train_log rows
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))  # content-type sampling weights
    # curriculum: the mix of global steps [0, early_mix_steps); induction heads form there before text competes
    early_mix: dict[str, float] | None = None
    early_mix_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        for name in ("dense_steps", "warmup_steps", "sparse_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        _check_mix("mix", self.mix)
        if self.early_mix_steps < 0:
            raise ConfigError(f"early_mix_steps={self.early_mix_steps} must be >= 0")
        if self.early_mix_steps and self.early_mix is None:
            raise ConfigError(f"early_mix_steps={self.early_mix_steps} needs an early_mix (e.g. {{'induction': 1.0}})")
        if self.early_mix is not None:
            _check_mix("early_mix", self.early_mix)
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"threads={self.threads} must be a positive number of torch threads, or None")
        for name in ("grad_clip", "indexer_grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive gradient norm (e.g. 1.0)")

    @property
    def total_steps(self) -> int:
        return self.dense_steps + self.warmup_steps + self.sparse_steps

    def mix_at(self, step: int) -> dict[str, float]:
        """The content-type mix of global step `step`: `early_mix` before `early_mix_steps`, then `mix`."""
        return self.early_mix if self.early_mix is not None and step < self.early_mix_steps else self.mix


def _check_mix(name: str, mix: dict[str, float]) -> None:
    unknown = sorted(set(mix) - set(CONTENT_TYPES))
    if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ConfigError(
            f"{name}={mix} must weight known content types {CONTENT_TYPES} with non-negative weights "
            f"that sum to more than 0 (unknown: {unknown})"
        )


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: loss per content type at several lengths, and indexer recall."""

    length_multipliers: tuple[int, ...] = (1, 2, 4)  # evaluate at T, 2T, 4T
    n_samples: int = 16  # validation samples per content type and length
    batch_size: int = 8  # sequences per evaluation forward
    recall_samples: int = 8  # samples per content type and length used for indexer recall (needs T^2 maps)

    def __post_init__(self) -> None:
        if not self.length_multipliers or any(m <= 0 for m in self.length_multipliers):
            raise ConfigError(
                f"length_multipliers={self.length_multipliers} must be positive multiples of T, e.g. (1, 2, 4)"
            )
        for name in ("n_samples", "batch_size", "recall_samples"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
