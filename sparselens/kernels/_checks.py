"""Argument checks shared by every backend, so each op rejects bad input the same way whichever path runs it."""

import torch


def check_indexer_args(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate indexer inputs q[B,T,HI,DI], k[B,S,DI], w[B,T,HI]; returns (B, T, S, HI, DI)."""
    if q.dim() != 4 or k.dim() != 3 or w.dim() != 3:
        raise ValueError(
            f"indexer expects q[B,T,HI,DI], k[B,S,DI], w[B,T,HI]; got q{list(q.shape)}, k{list(k.shape)}, "
            f"w{list(w.shape)}: reshape the indexer key to one vector per token (shared by all indexer heads)"
        )
    B, T, HI, DI = q.shape
    if k.shape[0] != B or k.shape[2] != DI:
        raise ValueError(f"k{list(k.shape)} does not match q{list(q.shape)}: k must be [B={B}, S, DI={DI}]")
    if tuple(w.shape) != (B, T, HI):
        raise ValueError(f"w{list(w.shape)} does not match q{list(q.shape)}: w must be [B={B}, T={T}, HI={HI}]")
    if not (q.device == k.device == w.device):
        raise ValueError(f"q, k, w are on {q.device}, {k.device}, {w.device}: move them to one device")
    return B, T, k.shape[1], HI, DI


def check_topk_k(topk: int) -> None:
    """Reject a non-positive or non-integer selection budget."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
        raise ValueError(f"top-k budget must be a positive int, got {topk!r}: pass the number of keys to keep")


def check_scores(scores: torch.Tensor) -> None:
    """Validate scores[B,T,S]."""
    if scores.dim() != 3:
        raise ValueError(f"scores must be [B,T,S], got {list(scores.shape)}: add a batch dimension with unsqueeze(0)")


def check_attention_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor
) -> tuple[int, int, int, int, int, int, int]:
    """Validate q[B,T,H,D], k[B,S,HKV,D], v[B,S,HKV,D], indices[B,T,K] with H % HKV == 0 (query head h reads K/V
    head h // (H // HKV)); returns (B, T, S, H, HKV, D, K)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or indices.dim() != 3:
        raise ValueError(
            f"sparse_attention expects q[B,T,H,D], k/v[B,S,HKV,D], indices[B,T,K]; got q{list(q.shape)}, "
            f"k{list(k.shape)}, v{list(v.shape)}, indices{list(indices.shape)}"
        )
    B, T, H, D = q.shape
    S, HKV = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D or tuple(v.shape) != tuple(k.shape):
        raise ValueError(
            f"k{list(k.shape)} and v{list(v.shape)} must both be [B={B}, S, HKV, D={D}] to match q{list(q.shape)}"
        )
    if HKV == 0 or H % HKV != 0:
        raise ValueError(
            f"q has H={H} heads and k/v have HKV={HKV}: H must be a multiple of HKV (each group of H // HKV query "
            "heads shares one K/V head); use HKV = H (MHA), a divisor of H (GQA) or 1 (MQA)"
        )
    if tuple(indices.shape[:2]) != (B, T):
        raise ValueError(f"indices{list(indices.shape)} must be [B={B}, T={T}, K]: one index list per query")
    if indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"indices must be int64 or int32, got {indices.dtype}: use topk_indices' output")
    if not (q.device == k.device == v.device == indices.device):
        raise ValueError("q, k, v and indices must be on one device: move them with .to(q.device)")
    return B, T, S, H, HKV, D, indices.shape[2]


POISON_OUTPUTS = False  # tests set this so kernel outputs start as NaN (floats) / -7 (ints): unwritten entries fail


def empty_output(*shape: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """torch.empty for a kernel's output; poisoned (NaN, or -7 for integers) while POISON_OUTPUTS is set."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if dtype.is_floating_point else -7)
    return out
