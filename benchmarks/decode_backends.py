"""One decode step at a long context: the DSA model on the default (CPU fast path) kernels against the reference
kernels and the dense model, and `kernels.sparse_attention` alone at T = 1 on the same cache, in one process.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/decode_backends.py --root DIR --run-id ID [--context 16384] [--steps 16]
        [--cpu-time]   # process CPU time instead of wall time: steadier on a shared machine

Why: the CPU fast path of sparse attention copies all of K and V head-major on every call (`_head_major` in
kernels/sparse_attention/cpu.py), so one decode step reads O(S) memory although it attends to k rows; the reference
gathers only the selected rows. Both DSA variants use the same weights and the same stitched cache (see
sparselens/benchmark/timing.py); their logits must agree (error ratio <= 1e-5) or no ratio is printed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from sparselens import kernels
from sparselens.benchmark.models import load_variant, rebuild
from sparselens.benchmark.timing import fill_cache, held_out_tokens
from sparselens.storage import RunStore

CLOCK = time.perf_counter  # --cpu-time: time.process_time


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append((CLOCK() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--cpu-time", action="store_true", help="time process CPU time (all threads), not wall time")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    store, limit = RunStore(args.root, args.run_id), args.context + 2 * args.steps + 8
    models = {"dense": load_variant(store, "dense", limit), "dsa": load_variant(store, "dsa", limit)}
    models["dsa_reference"] = rebuild(models["dsa"], kernel_backend="reference")
    windows = held_out_tokens(args.chunk, -(-args.context // args.chunk) + 1)
    caches = {}
    for name in ("dense", "dsa"):
        caches[name] = models[name].new_cache(1)
        fill_cache(models[name], caches[name], args.context, windows, args.chunk)
    base = caches["dsa"]
    step = held_out_tokens(2 * args.steps + 2, 1, "prose")[0]  # [1, n]
    logits = {n: models[n](step[:, :1], cache=_copy(base)) for n in ("dsa", "dsa_reference")}
    err = ((logits["dsa"] - logits["dsa_reference"]).norm() / logits["dsa_reference"].norm()).item()
    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"context {args.context}, {torch.get_num_threads()} threads, {clock}; dsa fast vs reference: {err:.2e}")
    if err > 1e-5:
        raise SystemExit("the two DSA paths disagree: no timing reported")
    caches["dsa_reference"], caches["dsa"] = _copy(base), _copy(base)
    rows = _decode_ms(models, caches, step, args.steps)
    layer = base.layers[0]
    k, v = layer.k.buf[:, : base.length], layer.v.buf[:, : base.length]  # [1, S, H, D] cached, after RoPE
    ki = layer.index_k.buf[:, : base.length]  # [1, S, DI]
    q = torch.randn(1, 1, k.shape[2], k.shape[3])  # [1, 1, H, D]
    idx = torch.arange(base.length - 32, base.length).view(1, 1, 32)  # [1, 1, k]
    indexer = models["dsa"].blocks[0].indexer
    qi, wi = torch.randn(1, 1, indexer.plan.indexer_heads, ki.shape[-1]), torch.rand(1, 1, indexer.plan.indexer_heads)
    for backend in ("cpu", "reference"):
        rows[f"sparse_attention[{backend}], 1 layer"] = median_ms(
            lambda b=backend: kernels.sparse_attention(q, k, v, idx, backend=b), 3 * args.steps
        )
        rows[f"indexer_topk[{backend}], 1 layer"] = median_ms(
            lambda b=backend: kernels.indexer_topk(qi, ki, wi, 32, backend=b), 3 * args.steps
        )
    print(f"{'what (one decode step / one op call)':<38} {'median ms':>10} {'dense step / this':>18}")
    for name, ms in rows.items():
        print(f"{name:<38} {ms:10.3f} {rows['dense'] / ms:18.2f}")


def _copy(cache):
    return copy.deepcopy(cache)


def _decode_ms(models: dict, caches: dict, tokens: torch.Tensor, steps: int) -> dict[str, float]:
    """Median ms of one decode step per model, the models interleaved step by step (first step untimed)."""
    times = {name: [] for name in models}
    names = list(models)
    for j in range(steps + 1):
        for name in names[j % len(names) :] + names[: j % len(names)]:
            t0 = CLOCK()
            models[name](tokens[:, j : j + 1], cache=caches[name])
            if j:
                times[name].append((CLOCK() - t0) * 1e3)
    return {name: statistics.median(ms) for name, ms in times.items()}


if __name__ == "__main__":
    main()
