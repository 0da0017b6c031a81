"""Rotary position embedding, half-split layout (pairs are (x[i], x[i + d/2]))."""

from __future__ import annotations

import torch


def rope_tables(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, dim/2] for integer `positions[T]`."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, dim/2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the last dim of x[..., T, (heads...), d] half-split; cos/sin [T, d/2] broadcast over heads.

    x is [B, T, H, d] or [B, T, d]; cos/sin are reshaped to line up with the T axis.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    extra = x.dim() - 3  # number of axes between T and d (1 for [B, T, H, d], 0 for [B, T, d])
    shape = (1, cos.shape[0]) + (1,) * extra + (half,)
    c, s = cos.view(shape), sin.view(shape)
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
