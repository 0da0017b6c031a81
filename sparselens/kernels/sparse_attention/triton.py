"""Triton sparse attention: block-sparse tensor-core tiles with an exact per-query key mask, K/V shared by groups
of query heads (MHA, GQA, MQA).

Selections are turned into (a) a bitmap per query over keys (32 keys per int32 word) and (b) for every block of
BQ consecutive queries, the list of BN-key blocks that any of them selected (and its transpose). A forward
program owns one (query block, K/V head); the rows of its tile are the block's queries times the heads of that
K/V head's group (FlashMLA's layout: MQA with 16 heads puts 4 queries x 16 heads in a 64-row tile, so one K/V
tile feeds every head and the tensor cores see [BQ G, D] x [D, BN]). It runs flash attention over its listed key
blocks only, masking each [BQ G, BN] tile with the rows' bitmap words, so the result is exact. The backward is
split like FlashAttention-2: dq per (query block, K/V head) over the same list, dk/dv per (key block, K/V head)
over the transposed list (summing the group's heads inside the tile), so no atomics are needed. The cost is
proportional to the touched tiles: local or clustered selections (what trained indexers pick) skip most of the
causal triangle, scattered random selections touch nearly every block and cost about as much as dense attention;
with grouped heads a block holds fewer queries, whose selections touch fewer key blocks.
"""

import torch
import triton
import triton.language as tl

from sparselens.kernels._checks import check_attention_args, empty_output
from sparselens.kernels.sparse_attention.reference import canonical_indices

BLOCK_M = 64  # rows per tile, queries x heads of a group (>= 16 for tensor cores); fewer queries touch fewer blocks
BLOCK_N = 64  # keys per tile (16, 32 or 64); smaller tiles waste less on scattered selections


@triton.jit
def _tile_mask(words_ptr, b, o_m, m_m, kb, T, NW, BN: tl.constexpr):
    """[M, BN] bool: row query o_m selected key kb * BN + j (bit of its bitmap), from one or two words per row."""
    o_j = tl.arange(0, BN)
    w_first = kb * BN // 32
    p_row = words_ptr + (b * T + o_m) * NW + w_first  # [M]
    if BN == 64:
        w0 = tl.load(p_row, mask=m_m, other=0)
        w1 = tl.load(p_row + 1, mask=m_m & (w_first + 1 < NW), other=0)
        b_w = tl.where(o_j[None, :] < 32, w0[:, None], w1[:, None])  # [M, BN]
        shift = o_j % 32
    else:
        b_w = tl.load(p_row, mask=m_m, other=0)[:, None]  # [M, 1]
        shift = (kb * BN) % 32 + o_j
    return ((b_w >> shift[None, :]) & 1) != 0


@triton.jit
def _group_rows(pid_m, kvh, T, G, BQ: tl.constexpr, GP: tl.constexpr):
    """The BQ * GP rows of a tile: BQ consecutive queries from pid_m * BQ, each with the GP (>= G, a power of two)
    heads of K/V head kvh's group. Returns each row's query, query head and validity."""
    o_r = tl.arange(0, BQ * GP)
    o_m = pid_m * BQ + o_r // GP  # [M] query
    o_g = o_r % GP  # [M] head within the group
    return o_m, kvh * G + o_g, (o_m < T) & (o_g < G)


@triton.jit
def _sparse_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, words_ptr, cnt_ptr, list_ptr, o_ptr, lse_ptr,
    T, S, H, HKV, G, D, NW, NQB, NKB, scale,
    IEEE: tl.constexpr, BQ: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, kvh = (bh // HKV).to(tl.int64), bh % HKV
    o_m, o_h, m_m = _group_rows(pid_m, kvh, T, G, BQ, GP)  # [M] rows = (query, head of the group)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    p_q = q_ptr + ((b * T + o_m[:, None]) * H + o_h[:, None]) * D + o_d[None, :]
    b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [M, BD]
    m_i = tl.full([BQ * GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BQ * GP], dtype=tl.float32)
    acc = tl.zeros([BQ * GP, BD], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x log2 e)
    n_blocks = tl.load(cnt_ptr + b * NQB + pid_m)
    for i in range(n_blocks):
        kb = tl.load(list_ptr + (b * NQB + pid_m) * NKB + i)
        o_n = kb * BN + tl.arange(0, BN)
        m_n = o_n < S
        p_kv = ((b * S + o_n[:, None]) * HKV + kvh) * D + o_d[None, :]
        b_k = tl.load(k_ptr + p_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
        b_v = tl.load(v_ptr + p_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
        if IEEE:
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * qk_scale  # [M, BN], log2 units
        else:
            b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale
        b_s = tl.where(_tile_mask(words_ptr, b, o_m, m_m, kb, T, NW, BN), b_s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(b_s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing selected yet stay at zero
        b_p = tl.exp2(b_s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(b_p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(b_p, b_v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        m_i = m_new
    has = l_i > 0.0
    out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    tl.store(
        o_ptr + ((b * T + o_m[:, None]) * H + o_h[:, None]) * D + o_d[None, :], out, mask=m_m[:, None] & m_d[None, :]
    )
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))  # natural
    tl.store(lse_ptr + (b * T + o_m) * H + o_h, lse, mask=m_m)


@triton.jit
def _sparse_attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, words_ptr, cnt_ptr, list_ptr, dq_ptr,
    T, S, H, HKV, G, D, NW, NQB, NKB, scale,
    IEEE: tl.constexpr, BQ: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, kvh = (bh // HKV).to(tl.int64), bh % HKV
    o_m, o_h, m_m = _group_rows(pid_m, kvh, T, G, BQ, GP)  # [M]
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    p_row = ((b * T + o_m[:, None]) * H + o_h[:, None]) * D + o_d[None, :]
    b_q = tl.load(q_ptr + p_row, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [M, BD]
    b_do = tl.load(do_ptr + p_row, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [M, BD]
    b_lse = tl.load(lse_ptr + (b * T + o_m) * H + o_h, mask=m_m, other=float("-inf"))  # [M]
    b_delta = tl.load(delta_ptr + (b * T + o_m) * H + o_h, mask=m_m, other=0.0)  # [M]
    has = b_lse > float("-inf")
    lse2 = tl.where(has, b_lse, 0.0) * 1.4426950408889634  # log2 units
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BQ * GP, BD], dtype=tl.float32)
    n_blocks = tl.load(cnt_ptr + b * NQB + pid_m)
    for i in range(n_blocks):
        kb = tl.load(list_ptr + (b * NQB + pid_m) * NKB + i)
        o_n = kb * BN + tl.arange(0, BN)
        m_n = o_n < S
        p_kv = ((b * S + o_n[:, None]) * HKV + kvh) * D + o_d[None, :]
        b_k = tl.load(k_ptr + p_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
        b_v = tl.load(v_ptr + p_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
        sel = _tile_mask(words_ptr, b, o_m, m_m, kb, T, NW, BN) & has[:, None]
        if IEEE:
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * qk_scale
            b_dp = tl.dot(b_do, tl.trans(b_v), input_precision="ieee")
        else:
            b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale
            b_dp = tl.dot(b_do, tl.trans(b_v))
        b_p = tl.where(sel, tl.exp2(b_s - lse2[:, None]), 0.0)  # [M, BN]
        b_ds = b_p * (b_dp - b_delta[:, None])
        if IEEE:
            dq += tl.dot(b_ds, b_k, input_precision="ieee")
        else:
            dq += tl.dot(b_ds.to(b_k.dtype), b_k)
    tl.store(dq_ptr + p_row, dq * scale, mask=m_m[:, None] & m_d[None, :])


@triton.jit
def _sparse_attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, words_ptr, cnt_ptr, list_ptr, dk_ptr, dv_ptr,
    T, S, H, HKV, G, D, NW, NQB, NKB, scale,
    IEEE: tl.constexpr, BQ: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, kvh = (bh // HKV).to(tl.int64), bh % HKV
    o_n = pid_n * BN + tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_n, m_d = o_n < S, o_d < D
    p_kv = ((b * S + o_n[:, None]) * HKV + kvh) * D + o_d[None, :]
    b_k = tl.load(k_ptr + p_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
    b_v = tl.load(v_ptr + p_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BD], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    n_blocks = tl.load(cnt_ptr + b * NKB + pid_n)
    for i in range(n_blocks):
        qb = tl.load(list_ptr + (b * NKB + pid_n) * NQB + i)
        o_m, o_h, m_m = _group_rows(qb, kvh, T, G, BQ, GP)  # [M] every head of the group reads this K/V block
        p_row = ((b * T + o_m[:, None]) * H + o_h[:, None]) * D + o_d[None, :]
        b_q = tl.load(q_ptr + p_row, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [M, BD]
        b_do = tl.load(do_ptr + p_row, mask=m_m[:, None] & m_d[None, :], other=0.0)  # [M, BD]
        b_lse = tl.load(lse_ptr + (b * T + o_m) * H + o_h, mask=m_m, other=float("-inf"))
        b_delta = tl.load(delta_ptr + (b * T + o_m) * H + o_h, mask=m_m, other=0.0)
        has = b_lse > float("-inf")
        sel = _tile_mask(words_ptr, b, o_m, m_m, pid_n, T, NW, BN) & has[:, None]
        if IEEE:
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * qk_scale  # [M, BN], log2 units
            b_dp = tl.dot(b_do, tl.trans(b_v), input_precision="ieee")
        else:
            b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale
            b_dp = tl.dot(b_do, tl.trans(b_v))
        b_p = tl.where(sel, tl.exp2(b_s - (tl.where(has, b_lse, 0.0) * 1.4426950408889634)[:, None]), 0.0)
        b_ds = b_p * (b_dp - b_delta[:, None])
        if IEEE:
            dv += tl.dot(tl.trans(b_p), b_do, input_precision="ieee")
            dk += tl.dot(tl.trans(b_ds), b_q, input_precision="ieee")
        else:
            dv += tl.dot(tl.trans(b_p).to(b_do.dtype), b_do)
            dk += tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q)
    tl.store(dk_ptr + p_kv, dk * scale, mask=m_n[:, None] & m_d[None, :])
    tl.store(dv_ptr + p_kv, dv, mask=m_n[:, None] & m_d[None, :])


@triton.jit
def _bitmap_kernel(idx_ptr, words_ptr, bad_ptr, R, S, K, NW, BR: tl.constexpr, BK: tl.constexpr):
    """BR query rows per program: OR each row's selected keys into its bitmap words with two adds per word.

    Needs each row's valid keys (0 <= idx < S) first and non-decreasing (repeats allowed); a row breaking that
    is flagged in bad_ptr and its words are junk. Then a word's keys are one run of the row, their OR is the sum
    of its distinct bits, and with C the running sum of bits the run's last entry adds C and its first entry
    subtracts C before it. Sums run in int64 and are cut to int32: the two parts still add up to the word's bits.
    """
    o_r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)  # [BR] rows of the flattened [B * T]
    m_r = o_r < R
    c_sum = tl.zeros([BR], dtype=tl.int64)  # bits summed in earlier chunks
    bad = tl.zeros([BR], dtype=tl.int32)
    for start in range(0, K, BK):
        o_k = start + tl.arange(0, BK)
        p_idx = idx_ptr + o_r[:, None] * K + o_k[None, :]
        m_k = m_r[:, None] & (o_k < K)[None, :]  # [BR, BK]
        b_i = tl.load(p_idx, mask=m_k, other=-1).to(tl.int64)  # [BR, BK]
        b_p = tl.load(p_idx - 1, mask=m_k & (o_k > 0)[None, :], other=-1).to(tl.int64)  # previous entry
        b_n = tl.load(p_idx + 1, mask=m_r[:, None] & (o_k + 1 < K)[None, :], other=-1).to(tl.int64)  # next entry
        v_i, v_p, v_n = (b_i >= 0) & (b_i < S), (b_p >= 0) & (b_p < S), (b_n >= 0) & (b_n < S)
        bad |= tl.max((v_i & (o_k > 0)[None, :] & (~v_p | (b_p > b_i))).to(tl.int32), axis=1)
        bits = tl.where(v_i & ~(v_p & (b_p == b_i)), tl.full([BR, BK], 1, tl.int64) << (b_i & 31), 0)  # [BR, BK]
        csum = tl.cumsum(bits, axis=1) + c_sum[:, None]  # [BR, BK], bits summed up to here
        first = v_i & (~v_p | ((b_p >> 5) != (b_i >> 5)))
        last = v_i & (~v_n | ((b_n >> 5) != (b_i >> 5)))
        part = tl.where(last, csum, 0) - tl.where(first, csum - bits, 0)
        tl.atomic_add(words_ptr + o_r[:, None] * NW + (b_i >> 5), part.to(tl.int32), mask=first | last, sem="relaxed")
        c_sum += tl.sum(bits, axis=1)
    tl.store(bad_ptr + o_r, bad, mask=m_r)


def _bitmap_triton(indices: torch.Tensor, S: int) -> torch.Tensor:
    """Host wrapper: words [B, T, NW] int32 from indices [B, T, K] read as sets. Rows laid out as `topk_indices`
    returns them (ascending, then -1) take one pass; if any row is not, all rows are sorted and it runs again."""
    B, T, K = indices.shape
    NW = triton.cdiv(max(S, 1), 32)
    idx = indices.contiguous()
    words = torch.zeros(B, T, NW, dtype=torch.int32, device=idx.device)
    bad = torch.zeros(B * T, dtype=torch.int32, device=idx.device)
    if B * T == 0 or K == 0:
        return words
    BK = min(max(triton.next_power_of_2(K), 16), 1024)  # entries per chunk of a row
    BR = 1024 // BK  # rows per program
    grid = (triton.cdiv(B * T, BR),)
    _bitmap_kernel[grid](idx, words, bad, B * T, S, K, NW, BR=BR, BK=BK)
    if bool(bad.any()):
        srt = idx.masked_fill((idx < 0) | (idx >= S), S).sort(dim=-1).values  # [B, T, K], invalid (= S) last
        words.zero_()
        _bitmap_kernel[grid](srt, words, bad, B * T, S, K, NW, BR=BR, BK=BK)
    return words


def _bitmap_torch(indices: torch.Tensor, S: int) -> torch.Tensor:
    """The same words [B, T, NW] int32 in plain torch: each key's bit added into its word (distinct keys, so the
    sum is the OR). Fine on CPU; on a GPU the adds are atomics contending on shared words (H200, T = S = 32768,
    K = 2048: the whole build took 4 ms this way against 0.9 ms with the kernel)."""
    B, T, _ = indices.shape
    NW = triton.cdiv(max(S, 1), 32)
    idx = canonical_indices(indices, S)  # [B, T, K], no repeats
    valid = idx >= 0
    bits = torch.where(valid, 1 << (idx & 31), 0)  # [B, T, K] int64
    words = torch.zeros(B, T, NW, dtype=torch.int64, device=idx.device).scatter_add_(2, (idx >> 5).clamp(min=0), bits)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # [B, T, NW], same bits


def _any_per_query_block(x: torch.Tensor, BM: int) -> torch.Tensor:
    """[B, T, N] bool -> [B, cdiv(T, BM), N]: any over each block of BM queries (the last may be short)."""
    B, T, N = x.shape
    full = T - T % BM
    out = x[:, :full].reshape(B, full // BM, BM, N).any(dim=2)  # [B, T // BM, N]
    return out if full == T else torch.cat((out, x[:, full:].any(dim=1, keepdim=True)), dim=1)


def _touched_blocks(words: torch.Tensor, T: int, NKB: int, BM: int, BN: int) -> torch.Tensor:
    """[B, NQB, NKB] bool: some query of the block selected a key of the block, read from words [B, T, NW]."""
    B, _, NW = words.shape
    if T == 0:  # one empty query block, as the kernels' grid has
        return torch.zeros(B, 1, NKB, dtype=torch.bool, device=words.device)
    if BN == 16:  # int16 halves of a little-endian int32: low half (keys 16w..16w+15) first
        return _any_per_query_block(words.view(torch.int16) != 0, BM)[..., :NKB]  # [B, NQB, NKB]
    touched = _any_per_query_block(words != 0, BM)  # [B, NQB, NW]
    if BN == 32:
        return touched
    touched = torch.nn.functional.pad(touched, (0, NW % 2))  # [B, NQB, 2 * NKB]
    return touched.view(B, -1, NKB, 2).any(dim=-1)  # [B, NQB, NKB]


def build_block_lists(
    indices: torch.Tensor, T: int, S: int, BM: int, BN: int, kernel: bool | None = None
) -> dict[str, torch.Tensor]:
    """Selection structures for the kernels from indices [B, T, K] read as sets (entries outside [0, S) ignored).

    Returns words [B, T, NW] int32 (bit s % 32 of word s // 32 set when key s is selected), q_cnt [B, NQB] and
    q_list [B, NQB, NKB] int32 (ascending BN-key blocks touched by each BM-query block), and kv_cnt [B, NKB] with
    kv_list [B, NKB, NQB] int32 (query blocks touching each key block), plus the block sizes BM, BN.
    kernel: build the words with the Triton kernel (default on CUDA tensors) or in plain torch (default elsewhere).
    Rows laid out as `topk_indices` returns them (ascending, then -1) need no canonical_indices pass first.
    """
    NKB = triton.cdiv(max(S, 1), BN)
    if BN not in (16, 32, 64):
        raise ValueError(f"BLOCK_N={BN} is not supported: use 16, 32 or 64 (tiles must map onto 32-bit words)")
    use_kernel = indices.is_cuda if kernel is None else kernel
    words = (_bitmap_triton if use_kernel else _bitmap_torch)(indices, S)  # [B, T, NW]
    touched = _touched_blocks(words, T, NKB, BM, BN)  # [B, NQB, NKB]

    def lists(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices  # touched blocks first, ascending
        return mask.sum(dim=-1).to(torch.int32).contiguous(), order.to(torch.int32).contiguous()

    q_cnt, q_list = lists(touched)
    kv_cnt, kv_list = lists(touched.transpose(1, 2))  # [B, NKB, NQB]
    return dict(words=words, q_cnt=q_cnt, q_list=q_list, kv_cnt=kv_cnt, kv_list=kv_list, BM=BM, BN=BN)


def _prepare(q, k, v):
    same = q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16)
    dtype = q.dtype if same else torch.float32
    return q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous(), dtype == torch.float32


def group_blocks(H: int, HKV: int) -> tuple[int, int]:
    """(BQ, GP): queries per tile and rows per query (G = H // HKV heads of a group, padded to a power of two), so
    that a tile has BQ * GP = max(BLOCK_M, GP) rows. MHA (G = 1) keeps BLOCK_M queries per tile; MQA with 16 heads
    takes BLOCK_M / 16 queries, whose selections touch fewer key blocks than BLOCK_M queries' would."""
    GP = triton.next_power_of_2(H // HKV)
    return max(1, BLOCK_M // GP), GP


def sparse_attention_fwd(q, k, v, lists, scale):
    """Host wrapper: one program per (query block, batch * K/V head), whose tile rows are the block's queries times
    the group's heads; returns out [B,T,H,D] fp32 and lse [B,T,H]."""
    B, T, H, D = q.shape
    S, HKV = k.shape[1], k.shape[2]
    q, k, v, ieee = _prepare(q, k, v)
    out = empty_output(B, T, H, D, dtype=torch.float32, device=q.device)
    lse = empty_output(B, T, H, dtype=torch.float32, device=q.device)
    BQ, GP = group_blocks(H, HKV)
    if lists["BM"] != BQ:
        raise ValueError(f"internal: block lists built for {lists['BM']} queries per block, the kernel takes {BQ}")
    NQB, NKB = lists["q_list"].shape[1:]
    if B * T * H > 0:
        _sparse_attn_fwd_kernel[(NQB, B * HKV)](
            q, k, v, lists["words"], lists["q_cnt"], lists["q_list"], out, lse,
            T, S, H, HKV, H // HKV, D, lists["words"].shape[2], NQB, NKB, scale,
            IEEE=ieee, BQ=BQ, GP=GP, BN=lists["BN"], BD=max(16, triton.next_power_of_2(D)),
            num_warps=8 if BQ * GP >= 128 else 4,
        )  # fmt: skip
    return out, lse


def sparse_attention_bwd(q, k, v, out, lse, lists, grad, scale):
    """Host wrapper: dq per (query block, K/V head), dk/dv per (key block, K/V head) summed over the group's heads
    in the tile; grads in fp32."""
    B, T, H, D = q.shape
    S, HKV = k.shape[1], k.shape[2]
    q, k, v, ieee = _prepare(q, k, v)
    do = grad.to(q.dtype).contiguous()  # [B, T, H, D]
    delta = (grad.float() * out).sum(dim=-1).contiguous()  # [B, T, H]
    dq = empty_output(B, T, H, D, dtype=torch.float32, device=q.device)
    dk = empty_output(B, S, HKV, D, dtype=torch.float32, device=q.device)
    dv = empty_output(B, S, HKV, D, dtype=torch.float32, device=q.device)
    BQ, GP = group_blocks(H, HKV)
    NQB, NKB = lists["q_list"].shape[1:]
    NW = lists["words"].shape[2]
    meta = dict(IEEE=ieee, BQ=BQ, GP=GP, BN=lists["BN"], BD=max(16, triton.next_power_of_2(D)))
    common = (T, S, H, HKV, H // HKV, D, NW, NQB, NKB, scale)
    if B * T * H > 0:
        _sparse_attn_bwd_dq_kernel[(NQB, B * HKV)](
            q, k, v, do, lse, delta, lists["words"], lists["q_cnt"], lists["q_list"], dq, *common, **meta
        )
    if B * S * HKV > 0:
        _sparse_attn_bwd_dkdv_kernel[(NKB, B * HKV)](
            q, k, v, do, lse, delta, lists["words"], lists["kv_cnt"], lists["kv_list"], dk, dv, *common, **meta
        )
    return dq, dk, dv


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, scale):
        T, S = q.shape[1], k.shape[1]
        BQ, _ = group_blocks(q.shape[2], k.shape[2])
        lists = build_block_lists(indices.detach(), T, S, BQ, BLOCK_N)
        out, lse = sparse_attention_fwd(q.detach(), k.detach(), v.detach(), lists, scale)
        ctx.scale, ctx.lists, ctx.dtypes = scale, lists, (q.dtype, k.dtype, v.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = sparse_attention_bwd(q, k, v, out, lse, ctx.lists, grad, ctx.scale)
        return dq.to(ctx.dtypes[0]), dk.to(ctx.dtypes[1]), dv.to(ctx.dtypes[2]), None, None


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Triton sparse attention with the reference's contract.

    Args:
        q: queries [B, T, H, D].
        k: keys [B, S, HKV, D], H % HKV == 0; query head h reads K/V head h // (H // HKV).
        v: values [B, S, HKV, D].
        indices: [B, T, K] key positions shared by all heads, read as a set; entries outside [0, S) are ignored.
        scale: logit scale, default D ** -0.5.

    Returns:
        out [B, T, H, D] in q's dtype (zeros for a query with no valid index); differentiable in q, k, v.
    """
    check_attention_args(q, k, v, indices)
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    return _SparseAttention.apply(q, k, v, indices, scale)
