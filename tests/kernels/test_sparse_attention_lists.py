"""build_block_lists: the bitmap (Triton kernel and plain torch) and block lists against the scatter construction."""

import itertools

import pytest
import torch

from sparselens.kernels.sparse_attention.reference import canonical_indices
from sparselens.kernels.workloads import random_indices, sliding_window_indices


def _build_block_lists_scatter(indices, T, S, BM, BN):
    """The construction build_block_lists replaced (scatter_add of bits, scatter of touched blocks), kept as the
    reference: indices [B, T, K] canonical; returns the same dict."""
    B = indices.shape[0]
    NW, NKB, NQB = -(-max(S, 1) // 32), -(-max(S, 1) // BN), -(-max(T, 1) // BM)
    valid = indices >= 0
    word = torch.where(valid, indices // 32, 0)  # [B, T, K]
    bit = torch.where(valid, torch.ones_like(indices) << (indices.clamp(min=0) % 32), 0)
    words = torch.zeros(B, T, NW, dtype=torch.int64, device=indices.device).scatter_add_(2, word, bit)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # [B, T, NW]
    col = torch.zeros(B, NQB * BM, NKB + 1, dtype=torch.bool, device=indices.device)
    col[:, :T].scatter_(2, torch.where(valid, indices // BN, NKB), True)  # [B, T, NKB + 1]
    touched = col[:, :, :NKB].reshape(B, NQB, BM, NKB).any(dim=2)  # [B, NQB, NKB]

    def lists(mask):
        order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices
        return mask.sum(dim=-1).to(torch.int32), order.to(torch.int32)

    q_cnt, q_list = lists(touched)
    kv_cnt, kv_list = lists(touched.transpose(1, 2))
    return dict(words=words, q_cnt=q_cnt, q_list=q_list, kv_cnt=kv_cnt, kv_list=kv_list, BM=BM, BN=BN)


# (B, T, S, K): odd sizes, T != S, K > S, S a multiple of 32 and not, a word's bit 31 (S = 64)
SIZES = {"b2_t37_s53_k12": (2, 37, 53, 12), "t130_s64_k40": (1, 130, 64, 40), "t200_s1000_k70": (1, 200, 1000, 70),
         "k_above_s": (2, 17, 11, 30), "t1_s1_k3": (1, 1, 1, 3)}  # fmt: skip
BLOCKS = [(64, 16), (64, 32), (64, 64), (128, 16), (128, 32), (128, 64)]


def _selections(B, T, S, K):
    """Raw indices [B, T, K] of several layouts (repeats, unsorted, out of range, empty rows, windows)."""
    raw = random_indices(B, T, S + 3, K, seed=1)  # repeats, unsorted, -1 and some >= S
    raw[0, 0] = -1  # an empty row
    raw[-1, -1] = S + 1  # all out of range: also empty
    srt = torch.sort(raw.masked_fill(raw < 0, 2**40), dim=-1).values  # ascending with repeats, junk last
    return {"random": raw, "sorted_repeats": srt, "window": sliding_window_indices(B, T, T, K)}  # keys >= S: junk


def _check(got, want):
    for name in ("words", "q_cnt", "q_list", "kv_cnt", "kv_list"):
        assert got[name].dtype == torch.int32 and got[name].is_contiguous(), name
        assert torch.equal(got[name].cpu(), want[name]), name


def _cases(size):
    """(layout, canonical [B, T, K], raw [B, T, K]) per layout; canonical has -1 amid its keys (repeats) or after."""
    B, T, S, K = SIZES[size]
    for layout, raw in _selections(B, T, S, K).items():
        canon = canonical_indices(raw, S)
        assert (canon == -1).any(), layout
        yield layout, canon, raw


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_torch_lists_match_scatter_construction(size, triton_device):
    from sparselens.kernels.sparse_attention import triton as triton_attention

    _, T, S, _ = SIZES[size]
    for _, canon, raw in _cases(size):
        for BM, BN in BLOCKS:
            want = _build_block_lists_scatter(canon, T, S, BM, BN)
            for idx in (canon, raw):
                _check(triton_attention.build_block_lists(idx, T, S, BM, BN, kernel=False), want)


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_kernel_lists_match_scatter_construction(size, triton_device):
    """The lists come from the words by the same code as torch's, and the interpreter is slow: one block shape
    per input, rotating through them."""
    from sparselens.kernels.sparse_attention import triton as triton_attention

    _, T, S, _ = SIZES[size]
    blocks = itertools.islice(itertools.cycle(BLOCKS), list(SIZES).index(size), None)
    for _, canon, raw in _cases(size):
        # raw rows need the sorting second pass; int32 and a non-contiguous view reach the kernel unchanged
        for idx in (canon, raw, canon.int().transpose(0, 1).contiguous().transpose(0, 1)):
            BM, BN = next(blocks)
            got = triton_attention.build_block_lists(idx.to(triton_device), T, S, BM, BN, kernel=True)
            _check(got, _build_block_lists_scatter(canon, T, S, BM, BN))


@pytest.mark.parametrize("kernel", [False, True], ids=["torch", "triton"])
def test_lists_of_empty_shapes(kernel, triton_device):
    from sparselens.kernels.sparse_attention import triton as triton_attention

    for B, T, S, K in [(1, 5, 40, 0), (1, 0, 40, 4), (0, 5, 40, 4)]:
        idx = torch.zeros(B, T, K, dtype=torch.long)
        got = triton_attention.build_block_lists(idx.to(triton_device), T, S, 64, 16, kernel=kernel)
        _check(got, _build_block_lists_scatter(idx, T, S, 64, 16))


def test_kernel_chunks_carry_runs(triton_device):
    """K above the kernel's 1024-entry chunk: runs of one word that cross a chunk boundary."""
    from sparselens.kernels.sparse_attention import triton as triton_attention

    T, S, K = 6, 3000, 2100
    canon = sliding_window_indices(1, T, S, K)
    canon[0, 0, 1000:1030] = -1  # a gap of -1 straddling the boundary at 1024
    canon = canonical_indices(canon, S)
    got = triton_attention.build_block_lists(canon.to(triton_device), T, S, 64, 64, kernel=True)
    _check(got, _build_block_lists_scatter(canon, T, S, 64, 64))
