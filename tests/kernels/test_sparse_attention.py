"""sparse_attention: the reference against the definition, every backend against the reference (values, grads)."""

import pytest
import torch

from sparselens.kernels import sparse_attention
from sparselens.kernels.selections import random_indices
from sparselens.kernels.sparse_attention import reference
from sparselens.kernels.testing import error_ratio

TOL = 1e-5
# (B, T, S, H, D, K): odd lengths, T != S, K > S, D not a multiple of 8 (the CPU kernel's scalar path)
SHAPES = {
    "t37_s53_d16": (2, 37, 53, 3, 16, 12),
    "t63_s63_d64": (1, 63, 63, 2, 64, 20),
    "t111_s70_d24": (1, 111, 70, 4, 24, 9),
    "k_above_s_d13": (2, 17, 11, 2, 13, 30),
}
TRITON_SHAPES = ("t37_s53_d16", "k_above_s_d13")


def _inputs(B, T, S, H, D, K, device="cpu", seed=0):
    q, k, v = (torch.randn(B, n, H, D, device=device, requires_grad=True) for n in (T, S, S))
    idx = random_indices(B, T, S + 3, K, seed=seed).to(device)  # repeats, unsorted, -1, and some >= S
    idx[0, 0] = -1  # a query with no valid index
    idx[-1, -1, :] = S + 1  # all out of range: also no valid index
    return q, k, v, idx


def test_reference_matches_definition():
    B, T, S, H, D = 1, 3, 5, 2, 4
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, S, H, D), torch.randn(B, S, H, D)
    idx = torch.tensor([[[0, 2, 2, -1], [-1, -1, -1, -1], [4, 1, 7, 0]]])
    out = reference.sparse_attention(q, k, v, idx, scale=0.7)
    for t, keys in enumerate([[0, 2], [], [0, 1, 4]]):
        for h in range(H):
            if not keys:
                assert torch.equal(out[0, t, h], torch.zeros(D))
                continue
            p = torch.softmax(0.7 * k[0, keys, h] @ q[0, t, h], dim=0)
            assert torch.allclose(out[0, t, h], p @ v[0, keys, h], atol=1e-6)


def _check_backend(backend, shape, device, scale=None):
    q, k, v, idx = _inputs(*shape, device=device)
    ref = reference.sparse_attention(q, k, v, idx, scale=scale)
    out = sparse_attention(q, k, v, idx, scale=scale, backend=backend)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert error_ratio(out, ref) <= TOL
    assert torch.equal(out[0, 0], torch.zeros_like(out[0, 0])) and torch.equal(out[-1, -1], torch.zeros_like(out[0, 0]))
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    got = torch.autograd.grad(out, (q, k, v), grad)
    for name, g, r in zip("qkv", got, want, strict=True):
        assert error_ratio(g, r) <= TOL, f"d{name}"


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_cpu_matches_reference(shape):
    _check_backend("cpu", shape, "cpu")


@pytest.mark.parametrize("name", TRITON_SHAPES)
def test_triton_matches_reference(name, triton_device):
    _check_backend("triton", SHAPES[name], triton_device)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 64)], ids=["bm16_bn16", "bm32_bn64"])
def test_triton_block_sizes(block_m, block_n, triton_device, monkeypatch):
    from sparselens.kernels.sparse_attention import triton as triton_attention

    monkeypatch.setattr(triton_attention, "BLOCK_M", block_m)
    monkeypatch.setattr(triton_attention, "BLOCK_N", block_n)
    _check_backend("triton", SHAPES["t37_s53_d16"], triton_device)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_explicit_scale(backend):
    _check_backend(backend, SHAPES["t37_s53_d16"], "cpu", scale=0.3)


def test_cpu_fallback_without_native(monkeypatch):
    from sparselens.kernels import _native

    monkeypatch.setattr(_native, "library", lambda: None)
    _check_backend("cpu", SHAPES["t37_s53_d16"], "cpu")


def test_repeats_count_once():
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 6, 1, 8), torch.randn(1, 6, 1, 8)
    once = torch.tensor([[[1, 4, -1, -1], [0, 2, 3, -1]]])
    twice = torch.tensor([[[4, 1, 4, 1], [3, 0, 2, 0]]])
    for backend in ("reference", "cpu"):
        a = sparse_attention(q, k, v, once, backend=backend)
        assert torch.allclose(a, sparse_attention(q, k, v, twice, backend=backend), atol=1e-6)


def test_bad_shapes_raise():
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 6, 2, 8)
    with pytest.raises(ValueError, match="must both be"):
        sparse_attention(q, k, torch.randn(1, 6, 3, 8), torch.zeros(1, 4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="indices"):
        sparse_attention(q, k, k, torch.zeros(1, 5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64 or int32"):
        sparse_attention(q, k, k, torch.zeros(1, 4, 2))


def test_cpu_canonical_check_passes_only_canonical_rows():
    """The compiled check lets ascending rows with out-of-range padding through as they are (the kernels skip
    such entries) and sends anything else (repeats, descending, a valid entry after padding) to the sort."""
    from sparselens.kernels.sparse_attention import cpu

    S = 10
    canonical_rows = [[0, 3, 9, -1], [2, 5, 10, -7], [-1, -1, -1, -1], [1, 2, 3, 4]]
    for row in canonical_rows:
        idx = torch.tensor([[row]])
        assert cpu.canonical(idx, S) is not None and torch.equal(cpu.canonical(idx, S), idx)
    for row in ([3, 3, 5, -1], [5, 3, -1, -1], [2, -1, 4, -1], [0, 12, 4, -1]):
        idx = torch.tensor([[row]])
        assert torch.equal(cpu.canonical(idx, S), reference.canonical_indices(idx, S))
    q, k, v = (torch.randn(1, 4, 2, 8) for _ in range(3))
    idx = torch.tensor([[[0, 3, 9, -1], [2, 5, 10, -7], [-1, -1, -1, -1], [2, -1, 4, 4]]])
    k, v = torch.randn(1, S, 2, 8), torch.randn(1, S, 2, 8)
    got = sparse_attention(q, k, v, idx, backend="cpu")
    assert error_ratio(got, reference.sparse_attention(q, k, v, idx)) <= TOL
