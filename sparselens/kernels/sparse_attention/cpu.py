"""CPU fast path for sparse attention: compiled forward and backward (`_native/attention.c`) behind an
autograd.Function, for K/V shared by groups of query heads (MHA, GQA, MQA).

Work items are (batch, K/V head, query block): for each query the index list is read once and every selected
key's K and V rows are loaded once for all heads of its group, so MQA gathers 1/H of MHA's bytes. K/V stay in
their [B, S, HKV, D] layout when few queries gather from them (decoding: no copy of the cache per step); for
many queries (prefill, training) they are copied head-major ([B, HKV, S, D]) once per call so one head's rows
share pages and cache lines. The forward keeps the log-sum-exp per (query, head) so the backward recomputes
probabilities without a second softmax pass; the backward gives each worker whole (batch, K/V head) slices, so
dK/dV scatter-adds need no atomics. Without the compiled library a pure-torch path (`sparse_attention_torch`,
query chunks, grouped heads, autograd backward) runs instead.
"""

import torch

from sparselens.kernels import _native
from sparselens.kernels._checks import check_attention_args, empty_output
from sparselens.kernels.sparse_attention import reference

QUERY_BLOCK = 64  # queries per work item in the forward
HEAD_MAJOR_GATHERS = 4  # copy K/V head-major when each key row is gathered at least this often per call (T K / S)
TORCH_CHUNK_ELEMS = 1 << 24  # gathered [B, Tc, K, HKV, D] elements per query chunk in the torch path


def canonical(indices: torch.Tensor, S: int) -> torch.Tensor:
    """`reference.canonical_indices` for the kernels: rows already canonical (what top-k returns) are checked by
    one compiled pass and passed on as they are (the kernels skip out-of-range entries); others are sorted."""
    idx = indices.detach().long().contiguous()
    bad = torch.zeros(1, dtype=torch.int64)
    R, K = idx.shape[0] * idx.shape[1], idx.shape[2]
    if R * K:
        _native.launch("sl_rows_canonical", _native.ptr(idx), R, K, S, _native.ptr(bad), n_items=-(-R // 1024))
    return idx if bad.item() == 0 else reference.canonical_indices(idx, S).contiguous()


def _kv_layout(x: torch.Tensor, head_major: bool) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """fp32 K or V for the kernels and its (batch, key, head) strides in floats."""
    B, S, HKV, D = x.shape
    if head_major:
        return x.detach().float().permute(0, 2, 1, 3).contiguous(), (HKV * S * D, D, S * D)  # [B, HKV, S, D]
    return x.detach().float().contiguous(), (S * HKV * D, HKV * D, D)  # [B, S, HKV, D]


def _forward(q, k, v, indices, scale):
    B, T, S, H, HKV, D, K = check_attention_args(q, k, v, indices)
    head_major = T * K >= HEAD_MAJOR_GATHERS * S
    qf = q.detach().float().contiguous()  # [B, T, H, D]
    (kf, strides), (vf, _) = _kv_layout(k, head_major), _kv_layout(v, head_major)
    idx = canonical(indices, S)  # [B, T, K], read as a set: out-of-range entries ignored, no repeats
    out = empty_output(B, T, H, D, dtype=torch.float32)
    lse = empty_output(B, T, H, dtype=torch.float32)
    if B * T * H > 0:
        _native.launch(
            "sl_sparse_attn_fwd",
            *(_native.ptr(x) for x in (qf, kf, vf, idx, out, lse)),
            B, T, S, H, HKV, D, K, scale, *strides, QUERY_BLOCK,
            n_items=B * HKV * -(-T // QUERY_BLOCK),
        )  # fmt: skip
    return out, lse, (qf, kf, vf, idx), (head_major, strides)


def _backward(saved, layout, out, lse, grad, scale, S, HKV):
    qf, kf, vf, idx = saved
    head_major, strides = layout
    B, T, H, D = qf.shape
    K = idx.shape[2]
    dout = grad.float().contiguous()  # [B, T, H, D]
    dq = empty_output(B, T, H, D, dtype=torch.float32)
    dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)  # K/V's layout
    if B * T * H > 0:
        _native.launch(
            "sl_sparse_attn_bwd",
            *(_native.ptr(x) for x in (qf, kf, vf, idx, out, lse, dout, dq, dk, dv)),
            B, T, S, H, HKV, D, K, scale, *strides,
            n_items=B * HKV,
        )  # fmt: skip
    if head_major:
        dk, dv = dk.permute(0, 2, 1, 3), dv.permute(0, 2, 1, 3)  # [B, HKV, S, D] -> [B, S, HKV, D] views
    return dq, dk, dv


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, scale):
        out, lse, saved, layout = _forward(q, k, v, indices, scale)
        ctx.scale, ctx.layout, ctx.dtypes, ctx.kv = scale, layout, (q.dtype, k.dtype, v.dtype), k.shape[1:3]
        ctx.save_for_backward(*saved, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad):
        qf, kf, vf, idx, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward((qf, kf, vf, idx), ctx.layout, out, lse, grad, ctx.scale, *ctx.kv)
        return dq.to(ctx.dtypes[0]), dk.to(ctx.dtypes[1]), dv.to(ctx.dtypes[2]), None, None


def sparse_attention_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float
) -> torch.Tensor:
    """The pure-torch CPU path (no compiler): query chunks in bounded memory, each group's heads against its one
    gathered K/V head (no repeated K/V), autograd backward. Same contract as the reference."""
    B, T, S, H, HKV, D, K = check_attention_args(q, k, v, indices)
    G = H // HKV
    idx = reference.canonical_indices(indices, S)  # [B, T, K], -1 = invalid or repeated
    valid = idx >= 0
    idx = idx.clamp(0, max(S - 1, 0))
    b = torch.arange(B)[:, None, None]  # [B, 1, 1]
    chunk = max(1, TORCH_CHUNK_ELEMS // max(1, B * K * HKV * D))
    outs = []
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        kg, vg = k.float()[b, idx[:, t0:t1]], v.float()[b, idx[:, t0:t1]]  # [B, Tc, K, HKV, D]
        qg = q[:, t0:t1].float().reshape(B, t1 - t0, HKV, G, D)  # [B, Tc, HKV, G, D]
        logits = torch.einsum("btngd,btknd->btngk", qg, kg) * scale  # [B, Tc, HKV, G, K]
        m = valid[:, t0:t1, None, None, :]  # [B, Tc, 1, 1, K]
        logits = logits.masked_fill(~m, float("-inf")).masked_fill(~m.any(dim=-1, keepdim=True), 0.0)
        p = logits.softmax(dim=-1) * m  # zero where invalid, and for a query with nothing valid
        outs.append(torch.einsum("btngk,btknd->btngd", p, vg).reshape(B, t1 - t0, H, D))  # [B, Tc, H, D]
    out = torch.cat(outs, dim=1) if outs else q.new_zeros(B, T, H, D, dtype=torch.float32)
    return out.to(q.dtype)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """CPU sparse attention with the reference's contract.

    Args:
        q: queries [B, T, H, D].
        k: keys [B, S, HKV, D], H % HKV == 0; query head h reads K/V head h // (H // HKV).
        v: values [B, S, HKV, D].
        indices: [B, T, K] key positions shared by all heads, read as a set; entries outside [0, S) (e.g. -1)
            are ignored.
        scale: logit scale, default D ** -0.5.

    Returns:
        out [B, T, H, D] in q's dtype (zeros for a query with no valid index); differentiable in q, k, v.
    """
    B, T, S, H, HKV, D, K = check_attention_args(q, k, v, indices)
    if q.device.type != "cpu":
        raise ValueError(f"sparse_attention backend 'cpu' got {q.device} tensors: use backend=None or 'triton'")
    scale = D**-0.5 if scale is None else float(scale)
    if _native.library() is None:
        return sparse_attention_torch(q, k, v, indices, scale)
    return _SparseAttention.apply(q, k, v, indices, scale)
