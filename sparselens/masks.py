"""The one causal mask of the project: which keys each query may see.

Query t of a [T, S] map sits at key position S - T + t (T queries that end a sequence of S keys, as in a
prefill continuing a cache); it may see keys s <= S - T + t. True always means *allowed*: callers that need the
future keys write `~causal_mask(...)`.
"""

from __future__ import annotations

import torch


def causal_mask(t: int, s: int, device: torch.device | str | None = None) -> torch.Tensor:
    """bool [T, S], True where query t (at key position S - T + t) may look at key s, False for future keys."""
    if t < 0 or s < 0:
        raise ValueError(f"causal_mask needs non-negative sizes, got T={t}, S={s}")
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)  # [T, S]
