"""A small GPT: RMSNorm pre-norm blocks, RoPE, SwiGLU, and dense, DSA or plan-driven attention per ModelConfig."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparselens.config import ModelConfig
from sparselens.models.attention import Attention, layer_indexer
from sparselens.models.cache import DecodeCache
from sparselens.models.state import MODES, ForwardState


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = 16 * math.ceil(cfg.mlp_ratio * cfg.d_model / 16)
        self.gate_up = nn.Linear(cfg.d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.indexer = layer_indexer(cfg, cfg.layer_plan(layer))
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, state: ForwardState) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, kl = self.attn(self.attn_norm(x), state, self.indexer)
        x = x + out
        return x + self.mlp(self.mlp_norm(x)), kl


class GPT(nn.Module):
    """`model(tokens[B, T] int64) -> logits[B, T, V]`; `.cfg` is its ModelConfig."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):  # residual projections, GPT-2 scaling
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def main_parameters(self) -> list[nn.Parameter]:
        """Everything but the indexers."""
        return [p for n, p in self.named_parameters() if ".indexer." not in n]

    def indexer_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".indexer." in n]

    def new_cache(self, batch_size: int) -> DecodeCache:
        """An empty decode cache for `batch_size` sequences: then `model(tokens[B, t], cache=cache)` step by step."""
        return DecodeCache(self.cfg, batch_size)

    def forward(
        self,
        tokens: torch.Tensor,
        mode: str = "sparse",
        return_kl: bool = False,
        cache: DecodeCache | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """tokens[B, T] -> logits[B, T, V]; with return_kl, also the indexer KL averaged over indexer layers.

        mode applies to layers with indexers ("sparse", "dense_kl", "sparse_kl"; see attention.py). With `cache`
        (from `new_cache`), the tokens continue the cached sequences: their K/V and indexer keys are appended and
        the logits are those of positions cache.length .. cache.length + T - 1.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [B, T], got {tuple(tokens.shape)} {tokens.dtype}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        b, t = tokens.shape
        offset = 0 if cache is None else cache.length
        if cache is not None:
            cache.check_fits(b, t)
        elif t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={self.cfg.max_seq_len}; build with a larger one")
        state = ForwardState(t, offset, mode, tokens.device, self.cfg.rope_base, cache)
        x = self.embed(tokens)  # [B, T, d]
        kls = []
        for block in self.blocks:
            x, kl = block(x, state)
            if kl is not None:
                kls.append(kl)
        if cache is not None:
            cache.length += t
        logits = self.head(self.norm(x))  # [B, T, V]
        if not return_kl:
            return logits
        kl = torch.stack(kls).mean() if kls else logits.new_zeros(())
        return logits, kl


def build_model(cfg: ModelConfig) -> GPT:
    """A freshly initialised model for `cfg`."""
    return GPT(cfg)
