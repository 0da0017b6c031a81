"""CPU fast path for sparse attention: compiled forward and backward (`_native/dsa.c`) behind an autograd.Function.

K and V are copied head-major ([B, H, S, D]) once per call so one head's keys sit together in cache while every
query of that head gathers from them; the index list of a query is read once per head and shared by all heads.
The forward keeps the log-sum-exp per (query, head) so the backward recomputes probabilities without a second
softmax pass. The backward gives each worker whole (batch, head) slices, so dK/dV scatter-adds need no atomics.
Without the compiled library it falls back to the reference (autograd backward).
"""

import torch

from sparselens.kernels import _native
from sparselens.kernels._checks import check_attention_args, empty_output
from sparselens.kernels.sparse_attention import reference

QUERY_BLOCK = 64  # queries per work item in the forward


def _head_major(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().permute(0, 2, 1, 3).contiguous()  # [B, S, H, D] -> [B, H, S, D]


def canonical(indices: torch.Tensor, S: int) -> torch.Tensor:
    """`reference.canonical_indices` for the kernels: rows already canonical (what top-k returns) are checked by
    one compiled pass and passed on as they are (the kernels skip out-of-range entries); others are sorted."""
    idx = indices.detach().long().contiguous()
    bad = torch.zeros(1, dtype=torch.int64)
    R, K = idx.shape[0] * idx.shape[1], idx.shape[2]
    if R * K:
        _native.launch("sl_rows_canonical", _native.ptr(idx), R, K, S, _native.ptr(bad), n_items=-(-R // 1024))
    return idx if bad.item() == 0 else reference.canonical_indices(idx, S).contiguous()


def _forward(q, k, v, indices, scale):
    B, T, S, H, D, K = check_attention_args(q, k, v, indices)
    qf = q.detach().float().contiguous()  # [B, T, H, D]
    kh, vh = _head_major(k), _head_major(v)  # [B, H, S, D]
    idx = canonical(indices, S)  # [B, T, K], read as a set: out-of-range entries ignored, no repeats
    out = empty_output(B, T, H, D, dtype=torch.float32)
    lse = empty_output(B, T, H, dtype=torch.float32)
    if B * T * H > 0:
        _native.launch(
            "sl_sparse_attn_fwd",
            *(_native.ptr(x) for x in (qf, kh, vh, idx, out, lse)),
            B, T, S, H, D, K, scale, QUERY_BLOCK,
            n_items=B * H * -(-T // QUERY_BLOCK),
        )  # fmt: skip
    return out, lse, (qf, kh, vh, idx)


def _backward(saved, out, lse, grad, scale):
    qf, kh, vh, idx = saved
    B, T, H, D = qf.shape
    S, K = kh.shape[2], idx.shape[2]
    dout = grad.float().contiguous()  # [B, T, H, D]
    dq = empty_output(*qf.shape, dtype=torch.float32)
    dkh, dvh = torch.zeros_like(kh), torch.zeros_like(vh)  # [B, H, S, D]
    if B * T * H > 0:
        _native.launch(
            "sl_sparse_attn_bwd",
            *(_native.ptr(x) for x in (qf, kh, vh, idx, out, lse, dout, dq, dkh, dvh)),
            B, T, S, H, D, K, scale,
            n_items=B * H,
        )  # fmt: skip
    return dq, dkh.permute(0, 2, 1, 3), dvh.permute(0, 2, 1, 3)  # dk, dv back to [B, S, H, D]


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, scale):
        out, lse, saved = _forward(q, k, v, indices, scale)
        ctx.scale, ctx.dtypes = scale, (q.dtype, k.dtype, v.dtype)
        ctx.save_for_backward(*saved, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad):
        qf, kh, vh, idx, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward((qf, kh, vh, idx), out, lse, grad, ctx.scale)
        return dq.to(ctx.dtypes[0]), dk.to(ctx.dtypes[1]), dv.to(ctx.dtypes[2]), None, None


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """CPU sparse attention with the reference's contract.

    Args:
        q: queries [B, T, H, D].
        k: keys [B, S, H, D].
        v: values [B, S, H, D].
        indices: [B, T, K] key positions shared by all heads, read as a set; entries outside [0, S) (e.g. -1)
            are ignored.
        scale: logit scale, default D ** -0.5.

    Returns:
        out [B, T, H, D] in q's dtype (zeros for a query with no valid index); differentiable in q, k, v.
    """
    B, T, S, H, D, K = check_attention_args(q, k, v, indices)
    if q.device.type != "cpu":
        raise ValueError(f"sparse_attention backend 'cpu' got {q.device} tensors: use backend=None or 'triton'")
    scale = D**-0.5 if scale is None else float(scale)
    if _native.library() is None:
        return reference.sparse_attention(q, k, v, indices, scale=scale)
    return _SparseAttention.apply(q, k, v, indices, scale)
