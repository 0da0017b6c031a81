"""DSA kernels: lightning-indexer scores, top-k selection, fused indexer top-k and sparse attention.

Every op takes `backend=None | "reference" | "cpu" | "triton"`:

- `"reference"`: plain torch fp32 (`<op>/reference.py`), the specification; autograd gives the backward.
- `"cpu"`: the CPU fast path (`<op>/cpu.py`): C kernels compiled on first use (`_native/`, needs a C compiler),
  AVX-512 or AVX2 as the CPU allows (`SPARSELENS_CPU_ISA=avx512|avx2|torch` forces one), else a pure-torch
  fallback; sparse attention and indexer scores carry their own backward. CPU tensors only.
- `"triton"`: Triton kernels (`<op>/triton.py`) for CUDA tensors, or CPU tensors under `TRITON_INTERPRET=1`.
  Selection has no Triton kernel: on `"triton"` it runs Triton scores then `torch.topk` (`topk/unfused.py`).
- `None`: the fastest correct backend for the tensors' device: `"cpu"` on CPU, `"triton"` on CUDA when Triton is
  importable (else `"reference"`).
"""

import importlib
import os

import torch

BACKENDS = ("reference", "cpu", "triton")
_MODULES = {
    "indexer_scores": {
        "reference": "indexer_scores.reference",
        "cpu": "indexer_scores.cpu",
        "triton": "indexer_scores.triton",
    },
    "topk_indices": {"reference": "topk.reference", "cpu": "topk.cpu", "triton": "topk.reference"},
    "indexer_topk": {"reference": "topk.reference", "cpu": "topk.cpu", "triton": "topk.unfused"},
    "sparse_attention": {
        "reference": "sparse_attention.reference",
        "cpu": "sparse_attention.cpu",
        "triton": "sparse_attention.triton",
    },
}


def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def resolve_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that `op` runs on tensors on `device` for the requested `backend` (None = fastest correct)."""
    if backend is None:
        if device.type == "cuda":
            return "triton" if _triton_importable() else "reference"
        return "cpu" if device.type == "cpu" else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} for {op}: use one of {BACKENDS} or None")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' got {device} tensors for {op}: move them to the CPU or pass backend=None")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend 'triton' got {device} tensors for {op}: use CUDA tensors, or set TRITON_INTERPRET=1 before "
            "triton is imported to run the kernels in the interpreter"
        )
    return backend


def _impl(op: str, device: torch.device, backend: str | None):
    name = resolve_backend(op, device, backend)
    module = importlib.import_module(f"{__name__}.{_MODULES[op][name]}")
    return getattr(module, op)


def indexer_scores(
    q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, causal: bool = True, backend: str | None = None
) -> torch.Tensor:
    """I(t,s) = sum_j w[t,j] ReLU(q[t,j] . k[s]): q [B,T,HI,DI], k [B,S,DI], w [B,T,HI] -> [B,T,S] fp32.

    Query t sits at key position S - T + t; with `causal`, later keys are -inf. Differentiable in q, k, w.
    """
    return _impl("indexer_scores", q.device, backend)(q, k, w, causal=causal)


def topk_indices(scores: torch.Tensor, k: int, backend: str | None = None) -> torch.Tensor:
    """Top-k allowed (finite) keys per query: scores [B,T,S] -> [B,T,k] int64 in ascending key order, -1 padded."""
    return _impl("topk_indices", scores.device, backend)(scores, k)


def indexer_topk(
    q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, topk: int, causal: bool = True, backend: str | None = None
) -> torch.Tensor:
    """Fused indexer scores + top-k: q [B,T,HI,DI], k [B,S,DI], w [B,T,HI] -> [B,T,topk] int64, -1 padded.

    Equals topk_indices(indexer_scores(q, k, w, causal), topk) up to tie-breaking; never differentiable.
    """
    return _impl("indexer_topk", q.device, backend)(q, k, w, topk, causal=causal)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention over selected keys: q [B,T,H,D], k/v [B,S,HKV,D], indices [B,T,K] (shared by heads) -> [B,T,H,D].

    H % HKV == 0 and query head h reads K/V head h // (H // HKV), SDPA's enable_gqa convention (HKV = H: MHA,
    HKV = 1: MQA). A row of indices is a set (a repeated index counts once); indices outside [0, S) (e.g. -1) are
    ignored; a query with no valid index returns zeros; scale defaults to D ** -0.5. Query t may sit anywhere: the
    indices say which keys it reads. Differentiable in q, k, v everywhere.
    """
    return _impl("sparse_attention", q.device, backend)(q, k, v, indices, scale=scale)


__all__ = ["BACKENDS", "indexer_scores", "indexer_topk", "resolve_backend", "sparse_attention", "topk_indices"]


class _KernelsPackage(type(os)):
    """Keeps the public op functions bound when their same-named folders (`kernels/<op>/`) are imported.

    Importing `sparselens.kernels.sparse_attention.reference` makes Python set the package attribute
    `sparse_attention` to the subpackage; this class ignores that so `kernels.sparse_attention` stays the op.
    """

    def __setattr__(self, name, value):
        if name in _OPS and isinstance(value, type(os)):
            return
        super().__setattr__(name, value)


_OPS = {"indexer_scores": indexer_scores, "topk_indices": topk_indices, "sparse_attention": sparse_attention}
import sys  # noqa: E402

sys.modules[__name__].__class__ = _KernelsPackage
