"""Measures shared by evaluation and capture (plain torch, no I/O): how much attention a selection keeps."""

from __future__ import annotations

import torch


def recall_per_query(dense_pattern: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected and oracle mass per query.

    The layer's dense attention is summed over heads and L1-normalised; recall is its mass on the selected keys,
    the oracle its mass on each query's own best k keys.
    dense_pattern [B, H, T, S] (causal probabilities), idx [B, T, k] (-1 = none) -> (recall [B, T], oracle [B, T]).
    """
    p = dense_pattern.sum(1)  # [B, T, S]
    p = p / p.sum(-1, keepdim=True)
    picked = torch.gather(p, -1, idx.clamp(min=0)) * (idx >= 0)  # [B, T, k]
    oracle = p.topk(min(idx.shape[-1], p.shape[-1]), dim=-1).values.sum(-1)  # [B, T]
    return picked.sum(-1), oracle
