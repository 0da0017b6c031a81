"""The one causal mask of the project: which keys each query may see, as a torch tensor or a numpy array.

Query t of a [T, S] map sits at key position S - T + t (T queries that end a sequence of S keys, as in a
prefill continuing a cache); it may see keys s <= S - T + t. True always means *allowed*: callers that need the
future keys write `~causal_mask(...)`. torch is imported on first use, so numpy-only code can use the twin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _check(t: int, s: int) -> None:
    if t < 0 or s < 0:
        raise ValueError(f"causal_mask needs non-negative sizes, got T={t}, S={s}")


def causal_mask(t: int, s: int, device: torch.device | str | None = None) -> torch.Tensor:
    """bool [T, S], True where query t (at key position S - T + t) may look at key s, False for future keys."""
    import torch

    _check(t, s)
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)  # [T, S]


def causal_mask_np(t: int, s: int) -> np.ndarray:
    """The numpy twin of `causal_mask`: bool [T, S], True where query t (at key S - T + t) may look at key s."""
    _check(t, s)
    return np.tri(t, s, s - t, dtype=bool)  # [T, S]
