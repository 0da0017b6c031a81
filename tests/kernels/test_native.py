"""The compiled CPU library: build/fallback switch and use from a forked worker (Prefect/Dask fork workers)."""

import multiprocessing as mp

import pytest

from sparselens.kernels import _native, indexer_topk
from sparselens.kernels.selections import random_indexer_inputs


def test_opt_out_gives_the_torch_fallback(monkeypatch):
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("SPARSELENS_NO_NATIVE", "1")
    with pytest.warns(UserWarning, match="pure-torch fallback"):
        assert _native.library() is None
    assert _native.unavailable_reason() == "SPARSELENS_NO_NATIVE=1"


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
