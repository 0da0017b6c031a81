"""The compiled CPU library: instruction-set dispatch (every available path gives the same result), the opt-outs,
errors for a path the CPU cannot run, and use from a forked worker (Prefect/Dask fork workers)."""

import multiprocessing as mp

import pytest
import torch

from sparselens.kernels import _native, indexer_scores, indexer_topk, sparse_attention, topk_indices
from sparselens.kernels.indexer_scores.reference import indexer_scores as ref_scores
from sparselens.kernels.sparse_attention import reference as attn_reference
from sparselens.kernels.testing import check_selection, error_ratio, same_selection
from sparselens.kernels.workloads import random_indexer_inputs, random_indices, trained_like_indexer_inputs

TOL = 1e-5


def _indexer_workloads() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Prefill-like (300 queries, blocked kernel) and decode-like (2 queries, split kernel) indexer inputs."""
    return trained_like_indexer_inputs(1, 300, 333, 5, 24, seed=7), random_indexer_inputs(2, 2, 4099, 4, 64, seed=8)


def _run_every_op() -> dict[str, torch.Tensor]:
    """Every CPU op on fixed inputs: the blocked and the split (few-query) indexer top-k, scores, row top-k, and
    sparse attention forward + backward for MQA, GQA and MHA (D = 40: a vector tail on both builds)."""
    out = {}
    x, d = _indexer_workloads()
    with torch.no_grad():
        out["scores"] = indexer_scores(x["q"], x["k"], x["w"], backend="cpu")
        out["fused"] = indexer_topk(x["q"], x["k"], x["w"], 40, backend="cpu")
        out["split"] = indexer_topk(d["q"], d["k"], d["w"], 32, backend="cpu")
        out["rows"] = topk_indices(out["scores"], 40, backend="cpu")
    g = torch.Generator().manual_seed(9)
    for hkv in (1, 2, 4):
        q = torch.randn(2, 45, 4, 40, generator=g, requires_grad=True)
        k, v = (torch.randn(2, 61, hkv, 40, generator=g, requires_grad=True) for _ in range(2))
        idx = random_indices(2, 45, 64, 24, seed=hkv)
        o = sparse_attention(q, k, v, idx, backend="cpu")
        grads = torch.autograd.grad(o, (q, k, v), torch.ones_like(o))
        for name, t in zip(("out", "dq", "dk", "dv"), (o, *grads), strict=True):
            out[f"attn{hkv}_{name}"] = t.detach()
    return out


def test_forcing_each_path_gives_the_same_result(monkeypatch):
    """SPARSELENS_CPU_ISA forces a path: the compiled builds agree bit for bit (their arithmetic is lane-wise or
    8-lane in both), and the torch fallback agrees with them within the kernels' tolerance."""
    monkeypatch.delenv("SPARSELENS_NO_NATIVE", raising=False)
    paths = [*_native.cpu_isas(), "torch"]
    results = {}
    for isa in paths:
        monkeypatch.setenv("SPARSELENS_CPU_ISA", isa)
        assert _native.selected_isa() == isa
        lib = _native.library()
        assert (lib is None) == (isa == "torch")
        if lib is not None:
            assert lib.sl_isa().decode() == isa
        results[isa] = _run_every_op()
    x, d = _indexer_workloads()
    scores, decode_scores = ref_scores(x["q"], x["k"], x["w"]), ref_scores(d["q"], d["k"], d["w"])
    first = results[paths[0]]
    for isa, res in results.items():
        assert error_ratio(res["scores"], scores) <= TOL, isa
        for name, k, sc in (("fused", 40, scores), ("rows", 40, scores), ("split", 32, decode_scores)):
            assert check_selection(res[name], sc, k) is None, (isa, name)
            assert same_selection(res[name], first[name], sc), (isa, name)
        for name, t in res.items():
            if name.startswith("attn"):
                assert error_ratio(t, first[name]) <= TOL, (isa, name)
            if isa != "torch":
                assert torch.equal(t, first[name]), f"{isa} differs from {paths[0]} in {name}"


def test_auto_picks_the_best_build(monkeypatch):
    monkeypatch.delenv("SPARSELENS_CPU_ISA", raising=False)
    monkeypatch.delenv("SPARSELENS_NO_NATIVE", raising=False)
    monkeypatch.setattr(_native, "cpu_isas", lambda: ("avx2",))
    assert _native.selected_isa() == "avx2"
    monkeypatch.setattr(_native, "cpu_isas", lambda: ())
    assert _native.selected_isa() == "torch"


def test_a_path_the_cpu_lacks_is_an_error(monkeypatch):
    monkeypatch.delenv("SPARSELENS_NO_NATIVE", raising=False)
    monkeypatch.setattr(_native, "cpu_isas", lambda: ("avx2",))
    monkeypatch.setenv("SPARSELENS_CPU_ISA", "avx512")
    with pytest.raises(ValueError, match="can run only: avx2"):
        indexer_topk(torch.randn(1, 4, 2, 8), torch.randn(1, 6, 8), torch.randn(1, 4, 2), 3, backend="cpu")
    monkeypatch.setenv("SPARSELENS_CPU_ISA", "sse")
    with pytest.raises(ValueError, match="not one of"):
        _native.selected_isa()


def test_opt_out_gives_the_torch_fallback(monkeypatch):
    monkeypatch.setattr(_native, "_state", {"libs": {}})
    monkeypatch.setenv("SPARSELENS_NO_NATIVE", "1")
    with pytest.warns(UserWarning, match="pure-torch fallback"):
        assert _native.library() is None
    assert _native.unavailable_reason() == "SPARSELENS_NO_NATIVE=1"


def test_no_compiler_gives_the_torch_fallback(monkeypatch):
    monkeypatch.setattr(_native, "_state", {"libs": {}})
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    monkeypatch.delenv("SPARSELENS_CPU_ISA", raising=False)
    monkeypatch.delenv("SPARSELENS_NO_NATIVE", raising=False)
    assert _native.cpu_isas() == ()
    with pytest.warns(UserWarning, match="no C compiler"):
        assert _native.library() is None


def test_reference_attention_is_what_the_paths_are_checked_against():
    """The check above compares paths with each other; this ties the first one to the reference."""
    g = torch.Generator().manual_seed(9)
    q, k, v = (
        torch.randn(2, 45, 4, 40, generator=g),
        torch.randn(2, 61, 1, 40, generator=g),
        torch.randn(2, 61, 1, 40, generator=g),
    )
    idx = random_indices(2, 45, 64, 24, seed=1)
    got = sparse_attention(q, k, v, idx, backend="cpu")
    assert error_ratio(got, attn_reference.sparse_attention(q, k, v, idx)) <= TOL


def _child(queue, x):
    queue.put(indexer_topk(x["q"], x["k"], x["w"], 8, backend="cpu").tolist())  # plain data: no shared memory


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_kernels_work_in_a_forked_child():
    if _native.library() is None:
        pytest.skip(f"compiled kernels unavailable: {_native.unavailable_reason()}")
    x = random_indexer_inputs(1, 70, 70, 4, 16)
    want = indexer_topk(x["q"], x["k"], x["w"], 8, backend="cpu")  # parent creates its thread pool first
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, x))
    proc.start()
    got = queue.get(timeout=60)  # a child reusing the parent's (threadless) pool would hang here
    proc.join(timeout=10)
    assert got == want.tolist()
