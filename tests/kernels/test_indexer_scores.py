"""indexer_scores: the reference against the definition, every backend against the reference (values and grads)."""

import pytest
import torch

from sparselens.kernels import indexer_scores
from sparselens.kernels.indexer_scores import reference
from sparselens.kernels.testing import error_ratio

TOL = 1e-5
# (B, T, S, HI, DI): odd lengths, T < S (queries at the end of the keys), T > S (early queries see nothing)
SHAPES = {
    "square_63": (1, 63, 63, 4, 32),
    "t37_s53_hi3": (2, 37, 53, 3, 20),
    "t111_s200_hi5": (1, 111, 200, 5, 16),
    "t20_s9": (2, 20, 9, 4, 8),
}
TRITON_SHAPES = ("t37_s53_hi3", "t20_s9")


def _inputs(B, T, S, HI, DI, device="cpu"):
    q = torch.randn(B, T, HI, DI, device=device, requires_grad=True)
    k = torch.randn(B, S, DI, device=device, requires_grad=True)
    w = torch.randn(B, T, HI, device=device, requires_grad=True)
    return q, k, w


def test_reference_matches_definition():
    B, T, S, HI, DI = 2, 5, 8, 3, 4
    q, k, w = _inputs(B, T, S, HI, DI)
    out = reference.indexer_scores(q, k, w, causal=True)
    for b in range(B):
        for t in range(T):
            for s in range(S):
                want = sum(w[b, t, j] * torch.relu(q[b, t, j] @ k[b, s]) for j in range(HI))
                if s > S - T + t:
                    assert out[b, t, s] == float("-inf")
                else:
                    assert torch.allclose(out[b, t, s], want, atol=1e-5)


def _check_backend(backend, shape, causal, device):
    q, k, w = _inputs(*shape, device=device)
    ref = reference.indexer_scores(q, k, w, causal=causal)
    out = indexer_scores(q, k, w, causal=causal, backend=backend)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert error_ratio(out, ref) <= TOL
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (q, k, w), grad)
    got = torch.autograd.grad(out, (q, k, w), grad)
    for name, g, r in zip("qkw", got, want, strict=True):
        assert error_ratio(g, r) <= TOL, f"d{name}"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_cpu_matches_reference(shape, causal):
    _check_backend("cpu", shape, causal, "cpu")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("name", TRITON_SHAPES)
def test_triton_matches_reference(name, causal, triton_device):
    _check_backend("triton", SHAPES[name], causal, triton_device)


@pytest.mark.parametrize("name", ["t37_s53_hi3", "t20_s9"])
def test_cpu_recompute_backward_matches_reference(name, monkeypatch):
    from sparselens.kernels.indexer_scores import cpu

    monkeypatch.setattr(cpu, "T_S_ELEMS_FOR_RECOMPUTE", 0)  # force compiled forward + chunked backward
    monkeypatch.setattr(cpu, "BWD_CHUNK_ELEMS", 1000)  # several chunks
    _check_backend("cpu", SHAPES[name], True, "cpu")


def test_cpu_fallback_without_native(monkeypatch):
    from sparselens.kernels import _native

    monkeypatch.setattr(_native, "library", lambda: None)
    _check_backend("cpu", SHAPES["t37_s53_hi3"], True, "cpu")


@pytest.mark.parametrize(
    "q_shape,k_shape,w_shape",
    [((1, 4, 2, 8), (1, 6, 7), (1, 4, 2)), ((1, 4, 2, 8), (2, 6, 8), (1, 4, 2)), ((1, 4, 8), (1, 6, 8), (1, 4, 2))],
    ids=["dim_mismatch", "batch_mismatch", "q_missing_head_dim"],
)
def test_bad_shapes_raise(q_shape, k_shape, w_shape):
    with pytest.raises(ValueError, match="must be|expects"):
        indexer_scores(torch.randn(q_shape), torch.randn(k_shape), torch.randn(w_shape))
