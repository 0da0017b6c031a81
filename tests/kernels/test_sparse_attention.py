"""sparse_attention: the reference against the definition, every backend against the reference (values, grads) for
multi-head, grouped-query and multi-query K/V, decode shapes, and the CPU paths against each other."""

import pytest
import torch

from sparselens.kernels import sparse_attention
from sparselens.kernels.sparse_attention import cpu, reference
from sparselens.kernels.testing import error_ratio
from sparselens.kernels.workloads import random_indices

TOL = 1e-5
# (B, T, S, H, D, K): odd lengths, T != S, K > S, D not a multiple of 8 (vector tails), H even so HKV = 2 divides it
SHAPES = {
    "t37_s53_d16": (2, 37, 53, 4, 16, 12),
    "t63_s63_d64": (1, 63, 63, 2, 64, 20),
    "t111_s70_d24": (1, 111, 70, 6, 24, 9),
    "k_above_s_d13": (2, 17, 11, 4, 13, 30),
    "t50_s300_d40_h8": (1, 50, 300, 8, 40, 64),
}
TRITON_SHAPES = ("t37_s53_d16", "k_above_s_d13")
KV_HEADS = {"mqa": lambda H: 1, "gqa2": lambda H: 2, "mha": lambda H: H}


def _inputs(B, T, S, H, D, K, hkv=None, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hkv = H if hkv is None else hkv
    q = torch.randn(B, T, H, D, generator=g).to(device).requires_grad_()
    k, v = (torch.randn(B, S, hkv, D, generator=g).to(device).requires_grad_() for _ in range(2))
    idx = random_indices(B, T, S + 3, K, seed=seed).to(device)  # repeats, unsorted, -1, and some >= S
    idx[0, 0] = -1  # a query with no valid index
    idx[-1, -1, :] = S + 1  # all out of range: also no valid index
    return q, k, v, idx


def test_reference_matches_definition():
    B, T, S, H, HKV, D = 1, 3, 5, 4, 2, 4
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, S, HKV, D), torch.randn(B, S, HKV, D)
    idx = torch.tensor([[[0, 2, 2, -1], [-1, -1, -1, -1], [4, 1, 7, 0]]])
    out = reference.sparse_attention(q, k, v, idx, scale=0.7)
    for t, keys in enumerate([[0, 2], [], [0, 1, 4]]):
        for h in range(H):
            if not keys:
                assert torch.equal(out[0, t, h], torch.zeros(D))
                continue
            g = h // (H // HKV)  # query heads 0, 1 read K/V head 0; heads 2, 3 read K/V head 1
            p = torch.softmax(0.7 * k[0, keys, g] @ q[0, t, h], dim=0)
            assert torch.allclose(out[0, t, h], p @ v[0, keys, g], atol=1e-6)


def test_reference_multi_head_is_unchanged():
    """HKV = H runs the reference's multi-head formula as it was before grouped K/V existed, bit for bit."""
    q, k, v, idx = _inputs(*SHAPES["t37_s53_d16"])
    canon = reference.canonical_indices(idx, k.shape[1])
    valid, pos = canon >= 0, canon.clamp(min=0)
    b = torch.arange(q.shape[0])[:, None, None]
    logits = torch.einsum("bthd,btkhd->bthk", q, k[b, pos]) * q.shape[-1] ** -0.5  # [B, T, H, K]
    m = valid[:, :, None, :]
    logits = logits.masked_fill(~m, float("-inf")).masked_fill(~m.any(dim=-1, keepdim=True), 0.0)
    want = torch.einsum("bthk,btkhd->bthd", logits.softmax(dim=-1) * m, v[b, pos])
    assert torch.equal(reference.sparse_attention(q, k, v, idx), want)


def _check_backend(backend, shape, device, hkv=None, scale=None, grad=True):
    """Output (and, with grad, dq/dk/dv) of `backend` against the reference; outputs start as NaN (conftest)."""
    q, k, v, idx = _inputs(*shape, hkv=hkv, device=device)
    ref = reference.sparse_attention(q, k, v, idx, scale=scale)
    with torch.set_grad_enabled(grad):
        out = sparse_attention(q, k, v, idx, scale=scale, backend=backend)
    assert out.shape == ref.shape and out.dtype == q.dtype and out.requires_grad == grad
    assert error_ratio(out, ref) <= TOL
    zero = torch.zeros_like(out[0, 0])
    assert torch.equal(out[0, 0], zero) and torch.equal(out[-1, -1], zero)
    if grad:
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, (q, k, v), g)
        got = torch.autograd.grad(out, (q, k, v), g)
        for name, a, r in zip("qkv", got, want, strict=True):
            assert a.shape == r.shape and error_ratio(a, r) <= TOL, f"d{name}"


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("kv", list(KV_HEADS))
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_cpu_matches_reference(shape, kv, grad):
    _check_backend("cpu", shape, "cpu", hkv=KV_HEADS[kv](shape[3]), grad=grad)


@pytest.mark.parametrize("kv", list(KV_HEADS))
@pytest.mark.parametrize("name", TRITON_SHAPES)
def test_triton_matches_reference(name, kv, triton_device):
    shape = SHAPES[name]
    _check_backend("triton", shape, triton_device, hkv=KV_HEADS[kv](shape[3]))


@pytest.mark.parametrize("kv", ["mqa", "mha"])
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 64)], ids=["bm16_bn16", "bm32_bn64"])
def test_triton_block_sizes(block_m, block_n, kv, triton_device, monkeypatch):
    from sparselens.kernels.sparse_attention import triton as triton_attention

    monkeypatch.setattr(triton_attention, "BLOCK_M", block_m)
    monkeypatch.setattr(triton_attention, "BLOCK_N", block_n)
    shape = SHAPES["t37_s53_d16"]
    _check_backend("triton", shape, triton_device, hkv=KV_HEADS[kv](shape[3]))


def test_triton_group_wider_than_the_tile(triton_device, monkeypatch):
    """A group of 24 heads (padded to 32) with 16-row tiles: one query per tile, the tile grows to the group."""
    from sparselens.kernels.sparse_attention import triton as triton_attention

    monkeypatch.setattr(triton_attention, "BLOCK_M", 16)
    _check_backend("triton", (1, 21, 30, 24, 16, 9), triton_device, hkv=1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_explicit_scale(backend):
    _check_backend(backend, SHAPES["t37_s53_d16"], "cpu", hkv=2, scale=0.3)


@pytest.mark.parametrize("kv", list(KV_HEADS))
def test_cpu_torch_path_without_native(kv, monkeypatch):
    """No compiler: the pure-torch path (query chunks, grouped heads; its own code, not the reference) runs."""
    from sparselens.kernels import _native

    monkeypatch.setattr(_native, "library", lambda: None)
    monkeypatch.setattr(cpu, "TORCH_CHUNK_ELEMS", 5000)  # several query chunks
    calls = []
    monkeypatch.setattr(cpu, "sparse_attention_torch", lambda *a: calls.append(1) or _torch_path(*a))
    for grad in (True, False):
        _check_backend("cpu", SHAPES["t111_s70_d24"], "cpu", hkv=KV_HEADS[kv](6), grad=grad)
    assert len(calls) == 2


_torch_path = cpu.sparse_attention_torch


@pytest.mark.parametrize("hkv", [1, 2, 3])
def test_cpu_group_equals_repeated_kv_exactly(hkv, compiled):
    """Query head h reads K/V head h // G: a grouped call gives bit for bit what multi-head attention gives on K/V
    repeated per head (the kernels' arithmetic per (query, head) does not depend on G), values and dq."""
    q, k, v, idx = _inputs(*SHAPES["t111_s70_d24"], hkv=hkv)
    G = q.shape[2] // hkv
    ke, ve = (x.detach().repeat_interleave(G, dim=2).requires_grad_() for x in (k, v))
    out, out_e = sparse_attention(q, k, v, idx, backend="cpu"), sparse_attention(q, ke, ve, idx, backend="cpu")
    assert torch.equal(out, out_e)
    g = torch.randn_like(out)
    dq, dk = torch.autograd.grad(out, (q, k), g)
    dq_e, dk_e = torch.autograd.grad(out_e, (q, ke), g)
    assert torch.equal(dq, dq_e)
    assert error_ratio(dk, dk_e.view(*dk.shape[:2], hkv, G, -1).sum(dim=3)) <= TOL  # summed in another order


@pytest.mark.parametrize("kv", ["mqa", "mha"])
def test_cpu_kv_layouts_agree_exactly(kv, monkeypatch, compiled):
    """K/V read in place ([B, S, HKV, D], decoding) or copied head-major (prefill): the same bits."""
    q, k, v, idx = _inputs(*SHAPES["t50_s300_d40_h8"], hkv=KV_HEADS[kv](8))
    results = []
    for gathers in (0, 10**9):  # always head-major, never
        monkeypatch.setattr(cpu, "HEAD_MAJOR_GATHERS", gathers)
        out = sparse_attention(q, k, v, idx, backend="cpu")
        results.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# decoding: one or a few queries at the end of a long, odd-length cache (query t sits at key S - T + t)
DECODE = {"t1_s20001": (1, 1, 20001, 8, 64, 64), "t3_s9999_b2": (2, 3, 9999, 4, 32, 100)}


@pytest.mark.parametrize("kv", list(KV_HEADS))
@pytest.mark.parametrize("name", list(DECODE))
def test_cpu_decode_shapes(name, kv):
    shape = DECODE[name]
    _check_backend("cpu", shape, "cpu", hkv=KV_HEADS[kv](shape[3]), grad=False)


@pytest.mark.parametrize("kv", ["mqa", "gqa2"])
def test_triton_decode_shape(kv, triton_device):
    shape = (1, 2, 3001, 4, 16, 40)
    _check_backend("triton", shape, triton_device, hkv=KV_HEADS[kv](4), grad=False)


def test_repeats_count_once():
    q, k, v = torch.randn(1, 2, 2, 8), torch.randn(1, 6, 1, 8), torch.randn(1, 6, 1, 8)
    once = torch.tensor([[[1, 4, -1, -1], [0, 2, 3, -1]]])
    twice = torch.tensor([[[4, 1, 4, 1], [3, 0, 2, 0]]])
    for backend in ("reference", "cpu"):
        a = sparse_attention(q, k, v, once, backend=backend)
        assert torch.allclose(a, sparse_attention(q, k, v, twice, backend=backend), atol=1e-6)


def test_bad_shapes_raise():
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 6, 2, 8)
    with pytest.raises(ValueError, match="must both be"):
        sparse_attention(q, k, torch.randn(1, 6, 1, 8), torch.zeros(1, 4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="multiple of HKV"):
        sparse_attention(torch.randn(1, 4, 3, 8), k, k, torch.zeros(1, 4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="indices"):
        sparse_attention(q, k, k, torch.zeros(1, 5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64 or int32"):
        sparse_attention(q, k, k, torch.zeros(1, 4, 2))


def test_cpu_canonical_check_passes_only_canonical_rows(compiled):
    """The compiled check lets ascending rows with out-of-range padding through as they are (the kernels skip
    such entries) and sends anything else (repeats, descending, a valid entry after padding) to the sort."""
    S = 10
    canonical_rows = [[0, 3, 9, -1], [2, 5, 10, -7], [-1, -1, -1, -1], [1, 2, 3, 4]]
    for row in canonical_rows:
        idx = torch.tensor([[row]])
        assert cpu.canonical(idx, S) is not None and torch.equal(cpu.canonical(idx, S), idx)
    for row in ([3, 3, 5, -1], [5, 3, -1, -1], [2, -1, 4, -1], [0, 12, 4, -1]):
        idx = torch.tensor([[row]])
        assert torch.equal(cpu.canonical(idx, S), reference.canonical_indices(idx, S))
    q = torch.randn(1, 4, 2, 8)
    idx = torch.tensor([[[0, 3, 9, -1], [2, 5, 10, -7], [-1, -1, -1, -1], [2, -1, 4, 4]]])
    k, v = torch.randn(1, S, 2, 8), torch.randn(1, S, 2, 8)
    got = sparse_attention(q, k, v, idx, backend="cpu")
    assert error_ratio(got, reference.sparse_attention(q, k, v, idx)) <= TOL
