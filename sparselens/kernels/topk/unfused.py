"""GPU selection: Triton indexer scores, then `torch.topk` (the reference) over the materialised [B, T, S] scores.

A fused GPU indexer top-k (a radix-select over each score row, as TileLang's `topk_selector`) would avoid the
[T, S] round trip through memory; until then selection costs one read of the scores.
"""

import torch

from sparselens.kernels._checks import check_indexer_args, check_topk_k
from sparselens.kernels.indexer_scores.triton import indexer_scores
from sparselens.kernels.topk.reference import topk_indices


def indexer_topk(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, topk: int, causal: bool = True) -> torch.Tensor:
    """Indexer top-k via Triton scores: q [B,T,HI,DI], k [B,S,DI], w [B,T,HI] -> [B,T,topk] int64, -1 padded."""
    check_indexer_args(q, k, w)
    check_topk_k(topk)
    with torch.no_grad():
        return topk_indices(indexer_scores(q, k, w, causal=causal), topk)
