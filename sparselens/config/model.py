"""The model section: a frozen `ModelConfig` that `sparselens.models.build_model` turns into a GPT."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparselens.config.base import ConfigError
from sparselens.config.plan import AttentionPlan, LayerPlan

ATTENTION_KINDS = ("dense", "dsa", "plan")
KERNEL_BACKENDS = (None, "reference", "cpu", "triton")


@dataclass(frozen=True)
class ModelConfig:
    """A GPT (RMSNorm, RoPE, SwiGLU) with dense, DSA or plan-driven attention."""

    attention: str = "dense"  # "dense" (SDPA), "dsa" (lightning indexer + top-k + gathered attention) or "plan"
    vocab_size: int = 256  # bytes
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # K/V heads shared by groups of query heads (1 = MQA); None = n_heads (MHA)
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
    plan: AttentionPlan | None = None  # attention="plan": what each layer reads (config/plan.py); else None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention={self.attention!r} is unknown; use one of {ATTENTION_KINDS}")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.plan is not None and not isinstance(self.plan, AttentionPlan):
            object.__setattr__(self, "plan", AttentionPlan.from_dict(self.plan))  # from a manifest or model file
        self._check_plan()
        if self.topk <= 0:
            raise ConfigError(f"topk={self.topk} must be a positive number of keys per query (e.g. 32)")
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "max_seq_len", "indexer_heads", "indexer_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if not isinstance(self.n_kv_heads, int) or self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (1 = MQA, n_heads = MHA)"
            )
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of even size")
        if self.indexer_dim % 4:
            raise ConfigError(f"indexer_dim={self.indexer_dim} must be a multiple of 4 (RoPE on half of it, in pairs)")
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ConfigError(f"kernel_backend={self.kernel_backend!r} is unknown; use one of {KERNEL_BACKENDS}")

    def _check_plan(self) -> None:
        if (self.attention == "plan") != (self.plan is not None):
            raise ConfigError(
                f"attention={self.attention!r} with plan={'set' if self.plan else 'None'}: a plan goes with "
                'attention="plan" and only with it'
            )
        if self.plan is not None and len(self.plan) != self.n_layers:
            raise ConfigError(f"the plan has {len(self.plan)} layers but n_layers={self.n_layers}: one entry per layer")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def layer_plan(self, layer: int) -> LayerPlan:
        """What layer `layer` reads: dense for "dense", an indexer of this HI, DI, k for "dsa", else the plan entry."""
        if self.attention == "plan":
            return self.plan.layers[layer]
        if self.attention == "dsa":
            return LayerPlan.indexer_layer(self.indexer_heads, self.indexer_dim, self.topk)
        return LayerPlan.dense()

    def replace(self, **changes) -> ModelConfig:
        """A copy with `changes`; changing n_heads of an MHA config keeps it MHA unless n_kv_heads is given."""
        if "n_heads" in changes and "n_kv_heads" not in changes and self.n_kv_heads == self.n_heads:
            changes["n_kv_heads"] = None
        return dataclasses.replace(self, **changes)
