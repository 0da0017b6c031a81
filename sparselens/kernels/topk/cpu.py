"""CPU fast paths for selection: row top-k over given scores, and the fused indexer top-k (`_native/indexer.c`).

The fused kernel scores a block of queries against a block of 16-key panels in registers and feeds each panel's
16 scores straight into a per-query running top-k (a candidate buffer of ~4k above a threshold, compacted with a
histogram when full, see README.md), so the [T, S] score matrix never exists. Panels are swept from the query's
own position backwards: recent keys usually score high, which raises the threshold early. With a few queries
(decoding: T <= SPLIT_MAX_T) the keys are instead split into chunks on every thread, read from k's rows and
transposed into panels on the fly (no packed copy of the whole cache per step), and the chunks' top-k are merged.
Both compute the same scores bit for bit and rank them by (score, key position), later keys winning ties, so a
decoding step selects exactly the keys the prefill of the same tokens selects. Without the compiled library both
ops fall back to torch (the indexer in query chunks, so memory stays bounded).
"""

import torch

from sparselens.kernels import _native
from sparselens.kernels._checks import check_indexer_args, check_scores, check_topk_k, empty_output
from sparselens.kernels.indexer_scores import reference as scores_reference
from sparselens.kernels.indexer_scores.cpu import QUERY_BLOCK, pack_keys, pad_heads, panels_per_block
from sparselens.kernels.topk import reference

FALLBACK_CHUNK_ELEMS = 1 << 24  # [B, Tc, HI, S] logits per chunk in the pure-torch fallback
SPLIT_MAX_T = 16  # at most this many queries per batch row: split the keys across threads (decoding)
SPLIT_MIN_KEYS = 1024  # keys per chunk of the split kernel, at least


def _indexer_topk_native(q, k, w, topk, causal):
    B, T, S, DI = q.shape[0], q.shape[1], k.shape[1], q.shape[3]
    qp, wp = pad_heads(q.detach(), w.detach())
    kp = pack_keys(k.detach())
    out = empty_output(B, T, topk, dtype=torch.int64)
    if B * T == 0:
        return out
    _native.launch(
        "sl_indexer_topk",
        *(_native.ptr(x) for x in (qp, kp, wp, out)),
        B, T, S, qp.shape[2], DI, int(causal), topk, QUERY_BLOCK, panels_per_block(DI),
        n_items=B * -(-T // QUERY_BLOCK),
    )  # fmt: skip
    return out


def _split_chunks(B: int, S: int) -> tuple[int, int]:
    """(keys per chunk, chunks) so that B * chunks items keep every thread busy, chunks >= SPLIT_MIN_KEYS."""
    want = -(-2 * torch.get_num_threads() // max(1, B))  # two items per thread balance uneven chunks
    n = max(1, min(want, -(-S // SPLIT_MIN_KEYS)))
    per_chunk = -(-S // n)
    chunk = max(16, -(-per_chunk // 16) * 16)  # a multiple of 16 keys
    return chunk, max(1, -(-S // chunk))


def merge_chunks(vals: torch.Tensor, idx: torch.Tensor, topk: int, S: int) -> torch.Tensor:
    """The best `topk` of candidates vals/idx [B, T, C] by (score, key position), as `topk_indices` lays them out:
    ascending positions, -1 padding (candidates scoring -inf are padding)."""
    by_pos = idx.argsort(dim=-1, descending=True, stable=True)  # later keys first among equal scores below
    vals, idx = vals.gather(-1, by_pos), idx.gather(-1, by_pos)
    best = vals.argsort(dim=-1, descending=True, stable=True)[..., :topk]  # [B, T, topk]
    sel = idx.gather(-1, best).masked_fill(vals.gather(-1, best) == float("-inf"), S)
    sel = sel.sort(dim=-1).values  # ascending positions, padding (= S) last
    return sel.masked_fill(sel == S, -1)


def _indexer_topk_split(q, k, w, topk, causal):
    """Few queries: each (batch row, key chunk) item keeps every query's top k of its chunk; merged here."""
    B, T, S, DI = q.shape[0], q.shape[1], k.shape[1], q.shape[3]
    qp, wp = pad_heads(q.detach(), w.detach())
    kc = k.detach().float().contiguous()  # [B, S, DI] rows, read in place
    chunk, n_chunks = _split_chunks(B, S)
    vals = empty_output(B, T, n_chunks * topk, dtype=torch.float32)
    idx = empty_output(B, T, n_chunks * topk, dtype=torch.int64)
    _native.launch(
        "sl_indexer_topk_split",
        *(_native.ptr(x) for x in (qp, kc, wp, vals, idx)),
        B, T, S, qp.shape[2], DI, int(causal), topk, chunk, n_chunks,
        n_items=B * n_chunks,
    )  # fmt: skip
    return merge_chunks(vals, idx, topk, S)


def _indexer_topk_chunked(q, k, w, topk, causal):
    """Pure-torch fallback: reference scores and top-k one query chunk at a time."""
    B, T, HI, _ = q.shape
    S = k.shape[1]
    out = torch.full((B, T, topk), -1, dtype=torch.int64)
    chunk = max(1, FALLBACK_CHUNK_ELEMS // max(1, B * HI * S))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        # causal: queries t0..t1-1 sit at S-T+t0..S-T+t1-1, so only keys [0, S-T+t1) can be seen
        s1 = min(S, S - T + t1) if causal else S
        if s1 <= 0:
            continue
        scores = scores_reference.indexer_scores(q[:, t0:t1], k[:, :s1], w[:, t0:t1], causal=causal)  # [B, Tc, s1]
        out[:, t0:t1] = reference.topk_indices(scores, topk)
    return out


def indexer_topk(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, topk: int, causal: bool = True) -> torch.Tensor:
    """Fused indexer top-k on the CPU: q [B,T,HI,DI], k [B,S,DI], w [B,T,HI] -> [B,T,topk] int64.

    Same contract as the reference: allowed keys only, ascending key positions, -1 padded; not differentiable.
    """
    check_indexer_args(q, k, w)
    check_topk_k(topk)
    if q.device.type != "cpu":
        raise ValueError(f"indexer_topk backend 'cpu' got {q.device} tensors: use backend=None or 'triton'")
    with torch.no_grad():
        if _native.library() is None:
            return _indexer_topk_chunked(q, k, w, topk, causal)
        if q.shape[1] <= SPLIT_MAX_T and q.shape[0] * q.shape[1] > 0:
            return _indexer_topk_split(q, k, w, topk, causal)
        return _indexer_topk_native(q, k, w, topk, causal)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k allowed (finite) keys of scores [B,T,S] on the CPU -> [B,T,k] int64, ascending positions, -1 padded."""
    check_scores(scores)
    check_topk_k(k)
    if scores.device.type != "cpu":
        raise ValueError(f"topk_indices backend 'cpu' got {scores.device} tensors: use backend=None or 'triton'")
    if _native.library() is None:
        return reference.topk_indices(scores, k)
    B, T, S = scores.shape
    flat = scores.detach().float().contiguous()
    out = empty_output(B, T, k, dtype=torch.int64)
    if B * T > 0:
        _native.launch("sl_topk_rows", _native.ptr(flat), _native.ptr(out), B * T, S, k, n_items=B * T)
    return out
