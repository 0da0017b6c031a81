"""Triton indexer scores: forward tile kernel, and a backward split into a dq/dw kernel and a dk kernel.

Each forward program scores a [BT queries, BS keys] tile: for every indexer head j one tensor-core product
q_j @ k^T, then ReLU, times w_j, summed into the tile, so the per-head logits never leave registers. Tiles that
lie wholly after their queries' positions are only filled with -inf. The backward recomputes the logits: one
kernel per (query block, head) accumulates dq and dw over key blocks, one per key block accumulates dk over
query blocks and heads, so neither needs atomics. fp32 inputs use IEEE products (reference-exact); bf16/fp16 use
the tensor cores at their native precision.
"""

import torch
import triton
import triton.language as tl

from sparselens.kernels._checks import check_indexer_args, empty_output


@triton.jit
def _indexer_fwd_kernel(
    q_ptr, k_ptr, w_ptr, out_ptr, T, S, DI,
    HI: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    pid_t, pid_s, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = pid_t * BT + tl.arange(0, BT)
    o_s = pid_s * BS + tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    m_t, m_s, m_d = o_t < T, o_s < S, o_d < DI
    acc = tl.zeros([BT, BS], dtype=tl.float32)
    t_last = tl.minimum(pid_t * BT + BT - 1, T - 1)
    live = True
    if CAUSAL:
        live = pid_s * BS <= S - T + t_last
    if live:
        p_k = k_ptr + (b * S + o_s[:, None]) * DI + o_d[None, :]
        b_k = tl.load(p_k, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BS, BD]
        for j in tl.static_range(HI):
            p_q = q_ptr + ((b * T + o_t[:, None]) * HI + j) * DI + o_d[None, :]
            b_q = tl.load(p_q, mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BT, BD]
            b_w = tl.load(w_ptr + (b * T + o_t) * HI + j, mask=m_t, other=0.0).to(tl.float32)  # [BT]
            if IEEE:
                b_l = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
            else:
                b_l = tl.dot(b_q, tl.trans(b_k))
            acc += b_w[:, None] * tl.maximum(b_l, 0.0)
    if CAUSAL:
        acc = tl.where(o_s[None, :] <= (S - T + o_t)[:, None], acc, float("-inf"))
    p_o = out_ptr + (b * T + o_t[:, None]) * S + o_s[None, :]
    tl.store(p_o, acc, mask=m_t[:, None] & m_s[None, :])


@triton.jit
def _indexer_bwd_dq_kernel(
    q_ptr, k_ptr, w_ptr, g_ptr, dq_ptr, dw_ptr, T, S, DI,
    HI: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    pid_t, j, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = pid_t * BT + tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    m_t, m_d = o_t < T, o_d < DI
    p_q = q_ptr + ((b * T + o_t[:, None]) * HI + j) * DI + o_d[None, :]
    b_q = tl.load(p_q, mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BT, BD]
    b_w = tl.load(w_ptr + (b * T + o_t) * HI + j, mask=m_t, other=0.0).to(tl.float32)  # [BT]
    dq = tl.zeros([BT, BD], dtype=tl.float32)
    dw = tl.zeros([BT], dtype=tl.float32)
    s_end = S
    if CAUSAL:
        s_end = tl.minimum(S, S - T + tl.minimum(pid_t * BT + BT - 1, T - 1) + 1)
    for s0 in range(0, s_end, BS):
        o_s = s0 + tl.arange(0, BS)
        m_s = o_s < S
        b_k = tl.load(k_ptr + (b * S + o_s[:, None]) * DI + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0.0)
        m_g = m_t[:, None] & m_s[None, :]
        if CAUSAL:
            m_g = m_g & (o_s[None, :] <= (S - T + o_t)[:, None])
        b_g = tl.load(g_ptr + (b * T + o_t[:, None]) * S + o_s[None, :], mask=m_g, other=0.0).to(tl.float32)
        if IEEE:
            b_l = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")  # [BT, BS]
        else:
            b_l = tl.dot(b_q, tl.trans(b_k))
        dw += tl.sum(b_g * tl.maximum(b_l, 0.0), axis=1)
        b_gl = tl.where(b_l > 0.0, b_g * b_w[:, None], 0.0)
        if IEEE:
            dq += tl.dot(b_gl, b_k.to(tl.float32), input_precision="ieee")
        else:
            dq += tl.dot(b_gl.to(b_k.dtype), b_k)
    tl.store(dq_ptr + ((b * T + o_t[:, None]) * HI + j) * DI + o_d[None, :], dq, mask=m_t[:, None] & m_d[None, :])
    tl.store(dw_ptr + (b * T + o_t) * HI + j, dw, mask=m_t)


@triton.jit
def _indexer_bwd_dk_kernel(
    q_ptr, k_ptr, w_ptr, g_ptr, dk_ptr, T, S, DI,
    HI: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
    BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    pid_s, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_s = pid_s * BS + tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    m_s, m_d = o_s < S, o_d < DI
    b_k = tl.load(k_ptr + (b * S + o_s[:, None]) * DI + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0.0)
    dk = tl.zeros([BS, BD], dtype=tl.float32)
    t_start = 0
    if CAUSAL:
        t_start = tl.maximum(0, pid_s * BS - (S - T)) // BT * BT  # first query block that sees this key block
    for t0 in range(t_start, T, BT):
        o_t = t0 + tl.arange(0, BT)
        m_t = o_t < T
        m_g = m_t[:, None] & m_s[None, :]
        if CAUSAL:
            m_g = m_g & (o_s[None, :] <= (S - T + o_t)[:, None])
        b_g = tl.load(g_ptr + (b * T + o_t[:, None]) * S + o_s[None, :], mask=m_g, other=0.0).to(tl.float32)
        for j in tl.static_range(HI):
            p_q = q_ptr + ((b * T + o_t[:, None]) * HI + j) * DI + o_d[None, :]
            b_q = tl.load(p_q, mask=m_t[:, None] & m_d[None, :], other=0.0)  # [BT, BD]
            b_w = tl.load(w_ptr + (b * T + o_t) * HI + j, mask=m_t, other=0.0).to(tl.float32)
            if IEEE:
                b_l = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")  # [BT, BS]
                b_gl = tl.where(b_l > 0.0, b_g * b_w[:, None], 0.0)
                dk += tl.dot(tl.trans(b_gl), b_q.to(tl.float32), input_precision="ieee")
            else:
                b_l = tl.dot(b_q, tl.trans(b_k))
                b_gl = tl.where(b_l > 0.0, b_g * b_w[:, None], 0.0)
                dk += tl.dot(tl.trans(b_gl).to(b_q.dtype), b_q)
    tl.store(dk_ptr + (b * S + o_s[:, None]) * DI + o_d[None, :], dk, mask=m_s[:, None] & m_d[None, :])


def _blocks(DI: int) -> tuple[int, int, int]:
    return 64, 64, max(16, triton.next_power_of_2(DI))


def _prepare(q, k, w):
    dtype = q.dtype if (q.dtype == k.dtype and q.dtype in (torch.float16, torch.bfloat16)) else torch.float32
    return q.to(dtype).contiguous(), k.to(dtype).contiguous(), w.float().contiguous(), dtype == torch.float32


def indexer_scores_fwd(q, k, w, causal):
    """Host wrapper: allocate [B,T,S] fp32, launch one program per (query tile, key tile, batch)."""
    B, T, S, HI, DI = check_indexer_args(q, k, w)
    q, k, w, ieee = _prepare(q, k, w)
    out = empty_output(B, T, S, dtype=torch.float32, device=q.device)
    BT, BS, BD = _blocks(DI)
    grid = (triton.cdiv(T, BT), triton.cdiv(S, BS), B)
    if B * T * S > 0:
        _indexer_fwd_kernel[grid](q, k, w, out, T, S, DI, HI=HI, CAUSAL=causal, IEEE=ieee, BT=BT, BS=BS, BD=BD)
    return out


def indexer_scores_bwd(q, k, w, grad, causal):
    """Host wrapper: dq, dw per (query tile, head); dk per key tile. Returns grads in the inputs' dtypes."""
    B, T, S, HI, DI = check_indexer_args(q, k, w)
    qc, kc, wc, ieee = _prepare(q, k, w)
    g = grad.float().contiguous()  # [B, T, S]
    dq = empty_output(B, T, HI, DI, dtype=torch.float32, device=q.device)
    dw = empty_output(B, T, HI, dtype=torch.float32, device=q.device)
    dk = empty_output(B, S, DI, dtype=torch.float32, device=q.device)
    BT, BS, BD = _blocks(DI)
    meta = dict(HI=HI, CAUSAL=causal, IEEE=ieee, BT=BT, BS=BS, BD=BD)
    if B * T > 0:
        _indexer_bwd_dq_kernel[(triton.cdiv(T, BT), HI, B)](qc, kc, wc, g, dq, dw, T, S, DI, **meta)
    if B * S > 0:
        _indexer_bwd_dk_kernel[(triton.cdiv(S, BS), B)](qc, kc, wc, g, dk, T, S, DI, **meta)
    if B * T == 0:
        dk.zero_()
    return dq.to(q.dtype), dk.to(k.dtype), dw.to(w.dtype)


class _IndexerScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, w, causal):
        ctx.causal = causal
        ctx.save_for_backward(q, k, w)
        return indexer_scores_fwd(q, k, w, causal)

    @staticmethod
    def backward(ctx, grad):
        q, k, w = ctx.saved_tensors
        dq, dk, dw = indexer_scores_bwd(q, k, w, grad, ctx.causal)
        return dq, dk, dw, None


def indexer_scores(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Triton indexer scores with the reference's contract.

    Args:
        q: indexer queries [B, T, HI, DI].
        k: indexer keys [B, S, DI].
        w: head weights [B, T, HI].
        causal: query t sits at key position S - T + t; later keys get -inf.

    Returns:
        scores [B, T, S] fp32, differentiable in q, k, w.
    """
    check_indexer_args(q, k, w)
    return _IndexerScores.apply(q, k, w, causal)
