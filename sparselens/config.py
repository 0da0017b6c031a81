"""Configuration: frozen dataclasses for models and training, named presets, and pydantic flow parameters.

Presets are the only way sizes enter a run (`PRESETS["quick"]`); a run's resolved preset is written into its
manifest. Every field says its unit or why it has the value it has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

ATTENTION_KINDS = ("dense", "dsa")
KERNEL_BACKENDS = (None, "reference", "cpu", "triton")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and a valid choice."""


@dataclass(frozen=True)
class ModelConfig:
    """A GPT (RMSNorm, RoPE, SwiGLU) with dense or DSA attention."""

    attention: str = "dense"  # "dense" (SDPA) or "dsa" (lightning indexer + top-k + gathered attention)
    vocab_size: int = 256  # bytes
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    max_seq_len: int = 1024  # longest sequence the model accepts (RoPE is computed on the fly up to here)
    indexer_heads: int = 4  # HI, light ReLU heads of the lightning indexer
    indexer_dim: int = (
        64  # DI, RoPE on the first DI/2 dims (half-split); quick: DI 16 or 32 left recall ~0.05 under the oracle
    )
    topk: int = 32  # k, an absolute number of keys per query (not a fraction of the length)
    mlp_ratio: float = 8 / 3  # SwiGLU hidden = ratio * d_model, rounded up to a multiple of 16 (keeps params ~4d^2)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    kernel_backend: str | None = None  # None: fastest correct kernel for the device; "reference" forces plain torch

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention={self.attention!r} is unknown; use one of {ATTENTION_KINDS}")
        if self.topk <= 0:
            raise ConfigError(f"topk={self.topk} must be a positive number of keys per query (e.g. 32)")
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "max_seq_len", "indexer_heads", "indexer_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of even size")
        if self.indexer_dim % 4:
            raise ConfigError(f"indexer_dim={self.indexer_dim} must be a multiple of 4 (RoPE on half of it, in pairs)")
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ConfigError(f"kernel_backend={self.kernel_backend!r} is unknown; use one of {KERNEL_BACKENDS}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


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

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        for name in ("dense_steps", "warmup_steps", "sparse_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("grad_clip", "indexer_grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive gradient norm (e.g. 1.0)")

    @property
    def total_steps(self) -> int:
        return self.dense_steps + self.warmup_steps + self.sparse_steps


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: loss per content type at several lengths, and indexer recall."""

    length_multipliers: tuple[int, ...] = (1, 2, 4)  # evaluate at T, 2T, 4T
    n_samples: int = 16  # validation samples per content type and length
    batch_size: int = 8
    recall_samples: int = 8  # samples per content type and length used for indexer recall (needs T^2 maps)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_overrides(self, topk: int | None = None, **train_changes) -> Preset:
        """A copy with the model's k and/or training fields replaced (validated by the dataclasses)."""
        model = self.model if topk is None else dataclasses.replace(self.model, topk=topk)
        train = dataclasses.replace(self.train, **train_changes) if train_changes else self.train
        return dataclasses.replace(self, model=model, train=train)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="Tests: a 2-layer d=32 model, 60 dense + 60 warm-up + 20 sparse steps; seconds on a CPU.",
        model=ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=256, indexer_heads=2, indexer_dim=8, topk=8),
        train=TrainConfig(
            seq_len=64,
            batch_size=4,
            dense_steps=60,
            warmup_steps=60,
            sparse_steps=20,
            lr=1e-2,
            lr_warmup_steps=5,
            resume_warmup_steps=2,
            indexer_lr=1e-2,
            checkpoint_every=10,
            log_every=10,
        ),
        eval=EvalConfig(length_multipliers=(1, 2), n_samples=2, batch_size=2, recall_samples=2),
    ),
    "quick": Preset(
        name="quick",
        description=(
            "A 2-core CPU in about 12 minutes: d 128, 4 layers, 4 heads, T 256, k 32 = T/8, HI 4, DI 64, batch 16. "
            "k = T/8 keeps the sparse budget meaningful at the training length and 32x below 4T = 1024."
        ),
        model=ModelConfig(),
        train=TrainConfig(),
        eval=EvalConfig(),
    ),
    "full": Preset(
        name="full",
        description=(
            "GPU-sized (documented, not run on the CPU): d 512, 8 layers, 8 heads, T 2048, k 256, HI 8, DI 64, "
            "batch 32; ~10k dense + 1k warm-up + 4k sparse steps."
        ),
        model=ModelConfig(
            n_layers=8, d_model=512, n_heads=8, max_seq_len=8192, indexer_heads=8, indexer_dim=64, topk=256
        ),
        train=TrainConfig(
            seq_len=2048,
            batch_size=32,
            dense_steps=10_000,
            warmup_steps=1_000,
            sparse_steps=4_000,
            lr=1e-3,
            lr_warmup_steps=500,
            resume_warmup_steps=100,
            indexer_lr=1e-3,
            checkpoint_every=500,
            log_every=50,
        ),
        eval=EvalConfig(n_samples=64, batch_size=4, recall_samples=16),
    ),
}


def get_preset(name: str) -> Preset:
    """The named preset; a clear error listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def preset_from_dict(data: dict) -> Preset:
    """Rebuild a Preset from `Preset.to_dict()` (as stored in a run's manifest)."""
    train = dict(data["train"])
    train["betas"] = tuple(train["betas"])
    ev = dict(data["eval"])
    ev["length_multipliers"] = tuple(ev["length_multipliers"])
    return Preset(
        name=data["name"],
        description=data["description"],
        model=ModelConfig(**data["model"]),
        train=TrainConfig(**train),
        eval=EvalConfig(**ev),
    )


class RunParams(BaseModel):
    """Parameters of the whole pipeline (shown as a form in the Prefect UI)."""

    preset: str = Field("quick", description="named preset: tiny (tests), quick (2-core CPU), full (GPU)")
    root: str = Field("./sparselens-data", description="run store root: a local path or an fsspec URL")
    run_id: str | None = Field(None, description="run id; a new one is made from the preset and time if empty")
    topk: int | None = Field(None, description="override the preset's k (keys per query)")


class PhaseParams(BaseModel):
    """Parameters of one phase re-run on an existing run."""

    run_id: str = Field(..., description="an existing run id under root/runs/")
    root: str = Field("./sparselens-data", description="run store root: a local path or an fsspec URL")
