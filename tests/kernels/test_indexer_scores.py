"""indexer_scores: the reference against the definition, every backend against the reference (values and grads)."""

from types import SimpleNamespace

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


def _check_backend(backend, shape, causal, device, grad=True):
    """Scores (and, with grad, dq/dk/dw) of `backend` against the reference; outputs start as NaN (conftest)."""
    q, k, w = _inputs(*shape, device=device)
    ref = reference.indexer_scores(q, k, w, causal=causal)
    with torch.set_grad_enabled(grad):
        out = indexer_scores(q, k, w, causal=causal, backend=backend)
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.requires_grad == grad
    assert error_ratio(out, ref) <= TOL
    if grad:
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, (q, k, w), g)
        got = torch.autograd.grad(out, (q, k, w), g)
        for name, a, r in zip("qkw", got, want, strict=True):
            assert error_ratio(a, r) <= TOL, f"d{name}"


@pytest.fixture
def cpu_no_reference_graph(monkeypatch):
    """Training-size inputs with a gradient would run the reference graph on purpose (its saved logits beat any
    recompute): force the compiled forward and the chunked backward so the test compares the fast path."""
    from sparselens.kernels.indexer_scores import cpu

    monkeypatch.setattr(cpu, "T_S_ELEMS_FOR_RECOMPUTE", 0)
    monkeypatch.setattr(cpu, "BWD_CHUNK_ELEMS", 1000)  # several chunks
    monkeypatch.setattr(cpu, "reference", SimpleNamespace(causal_mask=reference.causal_mask, indexer_scores=_refuse))


def _refuse(*args, **kwargs):
    raise AssertionError("the CPU backend ran the reference: the test would compare the reference with itself")


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_cpu_matches_reference(shape, causal, grad, cpu_no_reference_graph):
    _check_backend("cpu", shape, causal, "cpu", grad=grad)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("name", TRITON_SHAPES)
def test_triton_matches_reference(name, causal, triton_device):
    _check_backend("triton", SHAPES[name], causal, triton_device)


def test_cpu_training_sizes_run_the_reference_graph():
    """The routing the fixture above switches off: small inputs with a gradient take the reference's graph."""
    q, k, w = _inputs(*SHAPES["t37_s53_hi3"])
    assert "IndexerScores" not in type(indexer_scores(q, k, w, backend="cpu").grad_fn).__name__
    with torch.no_grad():
        assert indexer_scores(q, k, w, backend="cpu").grad_fn is None


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_cpu_torch_path_without_native(grad, cpu_no_reference_graph, monkeypatch):
    """No compiler: the chunked torch forward (its own code, not the reference) with the chunked backward."""
    from sparselens.kernels import _native

    monkeypatch.setattr(_native, "library", lambda: None)
    _check_backend("cpu", SHAPES["t111_s200_hi5"], True, "cpu", grad=grad)


# decoding: one or a few queries at the end of a long, odd-length key sequence
@pytest.mark.parametrize("shape", [(1, 1, 20001, 4, 64), (2, 3, 4099, 3, 20)], ids=["t1_s20001", "t3_s4099"])
def test_cpu_decode_shapes(shape, cpu_no_reference_graph):
    _check_backend("cpu", shape, True, "cpu", grad=False)


@pytest.mark.parametrize(
    "q_shape,k_shape,w_shape",
    [((1, 4, 2, 8), (1, 6, 7), (1, 4, 2)), ((1, 4, 2, 8), (2, 6, 8), (1, 4, 2)), ((1, 4, 8), (1, 6, 8), (1, 4, 2))],
    ids=["dim_mismatch", "batch_mismatch", "q_missing_head_dim"],
)
def test_bad_shapes_raise(q_shape, k_shape, w_shape):
    with pytest.raises(ValueError, match="must be|expects"):
        indexer_scores(torch.randn(q_shape), torch.randn(k_shape), torch.randn(w_shape))
