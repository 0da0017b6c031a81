"""The decode cache: per layer, keys and values after RoPE and the lightning indexer's keys, grown in place.

`cache = model.new_cache(batch_size)`; `model(tokens[B, t], cache=cache)` appends the t new positions and returns
their logits. Storage doubles when full (amortised O(1) appends, never past max_seq_len); the views handed to
attention cover exactly the positions written so far, so a sparse layer's kernel gathers only the rows it
selects from them.
"""

from __future__ import annotations

import torch

from sparselens.config import ModelConfig

FIRST_CAPACITY = 256  # positions allocated on the first append (grown by doubling)


class _Growing:
    """One [B, capacity, ...] buffer whose first `length` positions hold data."""

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None

    def append(self, new: torch.Tensor, at: int, limit: int) -> torch.Tensor:
        """Write new[B, t, ...] at positions at .. at + t - 1; returns the view [B, at + t, ...]."""
        end = at + new.shape[1]
        if self.buf is None or end > self.buf.shape[1]:
            capacity = min(limit, max(end, FIRST_CAPACITY, 2 * (0 if self.buf is None else self.buf.shape[1])))
            grown = new.new_empty(new.shape[0], capacity, *new.shape[2:])  # [B, capacity, ...]
            if self.buf is not None:
                grown[:, :at] = self.buf[:, :at]
            self.buf = grown
        self.buf[:, at:end] = new
        return self.buf[:, :end]

    def nbytes(self, length: int) -> int:
        if self.buf is None:
            return 0
        per_position = self.buf[:, :1].numel() * self.buf.element_size()
        return per_position * length


class LayerCache:
    """Keys and values [B, S, HKV, D] (after RoPE) and, for a layer with an indexer, its keys [B, S, DI]."""

    def __init__(self) -> None:
        self.k, self.v, self.index_k = _Growing(), _Growing(), _Growing()

    def append_kv(self, k: torch.Tensor, v: torch.Tensor, at: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k.append(k, at, limit), self.v.append(v, at, limit)

    def append_index_keys(self, k: torch.Tensor, at: int, limit: int) -> torch.Tensor:
        return self.index_k.append(k, at, limit)


class DecodeCache:
    """Everything a model needs to continue a batch of sequences one chunk (or token) at a time."""

    def __init__(self, cfg: ModelConfig, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        self.cfg = cfg
        self.batch_size = batch_size
        self.length = 0  # positions written (the next token's position)
        self.layers = [LayerCache() for _ in range(cfg.n_layers)]

    def check_fits(self, batch: int, new: int) -> None:
        """Refuse a chunk of another batch size, or one that would run past max_seq_len."""
        if batch != self.batch_size:
            raise ValueError(
                f"this cache holds {self.batch_size} sequences, got a batch of {batch}: one cache per batch"
            )
        if self.length + new > self.cfg.max_seq_len:
            raise ValueError(
                f"{self.length} cached + {new} new positions exceed max_seq_len={self.cfg.max_seq_len}; "
                "build the model with a larger max_seq_len"
            )

    def kv_bytes(self) -> int:
        """Bytes held for the positions written (keys, values and indexer keys of every layer)."""
        return sum(
            layer.k.nbytes(self.length) + layer.v.nbytes(self.length) + layer.index_k.nbytes(self.length)
            for layer in self.layers
        )
