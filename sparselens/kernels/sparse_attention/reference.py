"""Sparse attention over gathered keys in plain torch fp32: the specification every backend is tested against."""

import torch

from sparselens.kernels._checks import check_attention_args


def canonical_indices(indices: torch.Tensor, S: int) -> torch.Tensor:
    """Indices [B, T, K] -> int64 [B, T, K] with every invalid (outside [0, S)) or repeated entry set to -1.

    A row that is already ascending and duplicate-free before its -1 padding (what `topk_indices` returns) comes
    back unchanged after one cheap check; any other row is sorted first. Attention reads a row as a set.
    """
    idx = indices.long()
    ok = (idx >= 0) & (idx < S)  # [B, T, K]
    idx = torch.where(ok, idx, -1)
    K = idx.shape[-1]
    if K <= 1:
        return idx
    key = torch.where(ok, idx, torch.arange(S, S + K, device=idx.device))  # -1 at position j reads as S + j
    if bool((key[..., 1:] > key[..., :-1]).all()):  # strictly increasing: ascending keys, then only -1
        return idx
    srt = idx.masked_fill(idx < 0, S).sort(dim=-1).values  # [B, T, K], invalid (= S) last
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    return srt.masked_fill(dup | (srt == S), -1)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Softmax attention of each query over its own selected keys, the same selection for every head.

    o[t,h] = sum_j p[t,h,j] v[idx[t,j],g(h)] with p = softmax_j(scale * q[t,h] . k[idx[t,j],g(h)]) over valid j,
    where g(h) = h // (H // HKV) is the K/V head that query head h reads (SDPA's enable_gqa convention: HKV = H is
    multi-head, 1 < HKV < H grouped-query, HKV = 1 multi-query attention). An index is valid when 0 <= idx < S
    (-1 marks padding). A row is a set: a repeated index counts once. A query with no valid index returns zeros.

    Args:
        q: queries [B, T, H, D].
        k: keys [B, S, HKV, D], H % HKV == 0.
        v: values [B, S, HKV, D].
        indices: [B, T, K] int64/int32 key positions shared by all H heads, -1 = none.
        scale: logit scale, default D ** -0.5.

    Returns:
        out [B, T, H, D] in q's dtype (computed in fp32), differentiable in q, k and v through autograd.
    """
    B, T, S, H, HKV, D, K = check_attention_args(q, k, v, indices)
    scale = D**-0.5 if scale is None else scale
    if HKV != H:  # each K/V head serves H // HKV consecutive query heads
        k, v = k.repeat_interleave(H // HKV, dim=2), v.repeat_interleave(H // HKV, dim=2)  # [B, S, H, D]
    idx = canonical_indices(indices, S)  # [B, T, K], -1 = invalid or repeated
    valid = idx >= 0
    idx = idx.clamp(0, max(S - 1, 0))
    b = torch.arange(B, device=q.device)[:, None, None]  # [B, 1, 1]
    kg = k.float()[b, idx]  # [B, T, K, H, D]
    vg = v.float()[b, idx]  # [B, T, K, H, D]
    logits = torch.einsum("bthd,btkhd->bthk", q.float(), kg) * scale  # [B, T, H, K]
    m = valid[:, :, None, :]  # [B, T, 1, K]
    logits = logits.masked_fill(~m, float("-inf"))
    logits = logits.masked_fill(~m.any(dim=-1, keepdim=True), 0.0)  # a row with nothing valid stays finite
    p = logits.softmax(dim=-1) * m  # [B, T, H, K], zero where invalid
    return torch.einsum("bthk,btkhd->bthd", p, vg).to(q.dtype)  # [B, T, H, D]
