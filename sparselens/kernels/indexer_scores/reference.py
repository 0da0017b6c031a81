"""Lightning-indexer scores in plain torch fp32: the specification every other backend is tested against."""

import torch

from sparselens.kernels._checks import check_indexer_args


def causal_mask(T: int, S: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Allowed-key mask [T, S], True where key s may be seen by query t (key position s <= S - T + t)."""
    t = torch.arange(T, device=device)[:, None]  # [T, 1]
    s = torch.arange(S, device=device)[None, :]  # [1, S]
    return s <= (S - T) + t


def indexer_scores(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """I(t,s) = sum_j w[t,j] * ReLU(q[t,j] . k[s]), -inf for keys after the query when causal.

    Args:
        q: indexer queries [B, T, HI, DI].
        k: indexer keys [B, S, DI], one per token, shared by all HI indexer heads.
        w: per-query head weights [B, T, HI] (may be negative).
        causal: query t sits at key position S - T + t; keys after it get -inf.

    Returns:
        scores [B, T, S] fp32. Differentiable in q, k and w (masked entries carry no gradient).
    """
    check_indexer_args(q, k, w)
    T, S = q.shape[1], k.shape[1]
    logits = torch.einsum("bthd,bsd->bths", q.float(), k.float())  # [B, T, HI, S]
    scores = (w.float().unsqueeze(-1) * logits.relu()).sum(dim=2)  # [B, T, S]
    if causal:
        scores = scores.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
    return scores
