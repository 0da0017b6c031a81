"""What one forward pass carries from layer to layer: positions, RoPE tables, the mode, selections, the cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparselens.models.cache import DecodeCache
from sparselens.models.rope import rope_tables

MODES = ("sparse", "dense_kl", "sparse_kl", "oracle")


@dataclass
class ForwardState:
    """The new tokens of one call sit at positions offset .. offset + t - 1 (offset = what the cache held)."""

    t: int
    offset: int
    mode: str
    device: torch.device
    rope_base: float
    cache: DecodeCache | None = None
    selections: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, t, k] it attended to
    _tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def keys(self) -> int:
        """S: keys visible to the last new token (cached positions plus the new ones)."""
        return self.offset + self.t

    def rope(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [t, dim/2] at the new positions for a rotated part of `dim` dims (computed once per dim)."""
        if dim not in self._tables:
            pos = torch.arange(self.offset, self.offset + self.t, device=self.device)
            self._tables[dim] = rope_tables(pos, dim, self.rope_base)
        return self._tables[dim]
