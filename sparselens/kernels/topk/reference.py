"""Top-k selection over allowed keys in plain torch: the specification for `topk_indices` and `indexer_topk`."""

import torch

from sparselens.kernels._checks import check_indexer_args, check_scores, check_topk_k
from sparselens.kernels.indexer_scores.reference import indexer_scores


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest allowed scores per query, in ascending key order, padded with -1.

    A key is allowed when its score is finite (causal masking writes -inf). Only allowed keys are ever returned,
    so a query that sees fewer than k keys gets them all followed by -1 padding; no index repeats. The selected
    set is listed by ascending key position (not by score): sparse attention then walks memory forwards, and the
    order is the same on every backend. Among equal scores the later key wins here, so a query's selection depends
    only on its own row of scores (a decode step selects what the full forward selected at that position); other
    backends may break ties differently, so two backends can select different but equally-scored keys.

    Args:
        scores: [B, T, S] indexer scores, -inf where not allowed.
        k: number of keys to keep per query (> 0; may exceed S).

    Returns:
        indices [B, T, k] int64, ascending key positions, then -1 for the slots no allowed key fills.
    """
    check_scores(scores)
    check_topk_k(k)
    B, T, S = scores.shape
    allowed = torch.isfinite(scores)
    masked = scores.float().masked_fill(~allowed, float("-inf"))  # [B, T, S]
    kk = min(k, S)
    values, rev = masked.flip(-1).sort(dim=-1, descending=True, stable=True)  # [B, T, S]; ties: later key first
    values, idx = values[..., :kk], S - 1 - rev[..., :kk]  # [B, T, kk]
    idx = idx.masked_fill(values == float("-inf"), S).sort(dim=-1).values  # [B, T, kk], disallowed (= S) last
    idx = idx.masked_fill(idx == S, -1)
    if kk < k:
        pad = idx.new_full((B, T, k - kk), -1)
        idx = torch.cat([idx, pad], dim=-1)  # [B, T, k]
    return idx


def indexer_topk(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, topk: int, causal: bool = True) -> torch.Tensor:
    """Fused indexer + selection, specified as topk_indices(indexer_scores(q, k, w, causal), topk).

    Args:
        q: indexer queries [B, T, HI, DI].
        k: indexer keys [B, S, DI].
        w: head weights [B, T, HI].
        topk: keys kept per query (> 0).
        causal: query t sits at key position S - T + t and never selects a later key.

    Returns:
        indices [B, T, topk] int64, ascending key positions, -1 padded. Not differentiable: selection carries no
        gradient.
    """
    check_indexer_args(q, k, w)
    check_topk_k(topk)
    with torch.no_grad():
        return topk_indices(indexer_scores(q, k, w, causal=causal), topk)
