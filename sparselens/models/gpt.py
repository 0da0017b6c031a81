"""A small GPT: RMSNorm pre-norm blocks, RoPE, SwiGLU, and dense or DSA attention per ModelConfig."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparselens.config import ModelConfig
from sparselens.models.attention import MODES, Attention
from sparselens.models.indexer import Indexer
from sparselens.models.rope import rope_tables


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
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.indexer = Indexer(cfg) if cfg.attention == "dsa" else None
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, rope, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, kl = self.attn(self.attn_norm(x), rope, self.indexer, mode)
        x = x + out
        return x + self.mlp(self.mlp_norm(x)), kl


class GPT(nn.Module):
    """`model(tokens[B, T] int64) -> logits[B, T, V]`; `.cfg` is its ModelConfig."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
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

    def _rope(self, t: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        pos = torch.arange(t, device=device)
        cos, sin = rope_tables(pos, self.cfg.head_dim, self.cfg.rope_base)  # [T, D/2]
        cos_i, sin_i = rope_tables(pos, self.cfg.indexer_dim // 2, self.cfg.rope_base)  # [T, DI/4]
        return cos, sin, cos_i, sin_i

    def forward(
        self, tokens: torch.Tensor, mode: str = "sparse", return_kl: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """tokens[B, T] -> logits[B, T, V]; with return_kl, also the indexer KL averaged over layers.

        mode applies to DSA layers ("sparse", "dense_kl", "sparse_kl"; see attention.py) and is ignored by dense.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be int64 [B, T], got {tuple(tokens.shape)} {tokens.dtype}")
        t = tokens.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={self.cfg.max_seq_len}; build with a larger one")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        rope = self._rope(t, tokens.device)
        x = self.embed(tokens)  # [B, T, d]
        kls = []
        for block in self.blocks:
            x, kl = block(x, rope, mode)
            if kl is not None:
                kls.append(kl)
        logits = self.head(self.norm(x))  # [B, T, V]
        if not return_kl:
            return logits
        kl = torch.stack(kls).mean() if kls else logits.new_zeros(())
        return logits, kl


def build_model(cfg: ModelConfig) -> GPT:
    """A freshly initialised model for `cfg`."""
    return GPT(cfg)
