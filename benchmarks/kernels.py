"""DSA kernels against dense attention on this machine: one process, one table, checked before it is timed.

For each length L (default 1024..8192; H=8, D=64, HI=4, DI=32, k=256, batch 1, fp32) and each selection mode it
times dense causal SDPA, then the DSA pieces on the chosen backend: indexer scores alone (materialised [T, S]),
top-k over them, the fused indexer top-k (what the model runs), and sparse attention over the fused selection.
DSA total = fused indexer top-k + sparse attention; "ratio" is that over SDPA, "floor" the same ratio in FLOPs
(indexer + sparse attention over dense attention). Each op is first checked against its reference on a sample of
queries (error ratio <= 1e-5, valid and equally-scored selections); an op that fails prints FAIL, not a time, and
no ratio is reported for a total that includes it. Warm-up calls are excluded; each time is the median of
`--repeats` runs. A second table times forward + backward at the model's training size against the reference's
autograd.

Selection modes: `random` (Gaussian indexer inputs: scattered selections), `trained_like` (sinks, a local window
and clustered content, see `sparselens.kernels.selections`), or `--checkpoint PATH [PATH ...]`: indexer inputs
captured from a trained model (`torch.save({"q": [B,T,HI,DI], "k": [B,S,DI], "w": [B,T,HI]}, PATH)`, e.g. by
`benchmarks/indexer_inputs.py`), one row each, at the captured length and indexer shape (the floor uses that
shape); `--modes` adds synthetic rows at that length beside them.

Run with `OMP_WAIT_POLICY=PASSIVE` (torch's idle OpenMP threads then sleep instead of spinning while the kernel
threads work) on an otherwise idle machine; compare ratios, not absolute times, across machines:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/kernels.py [--lengths 4096 8192] [--modes random] [--backend cpu]
"""

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparselens import kernels
from sparselens.kernels import _native
from sparselens.kernels.indexer_scores import reference as scores_ref
from sparselens.kernels.selections import INDEXER_INPUTS, load_indexer_inputs
from sparselens.kernels.sparse_attention import reference as attn_ref
from sparselens.kernels.testing import check_selection, error_ratio, same_selection
from sparselens.kernels.topk import reference as topk_ref

H, D, HI, DI, TOPK = 8, 64, 4, 32, 256
TOL = 1e-5
SAMPLE = 48  # queries per correctness check: the first, the last and a spread in between


CLOCK = time.perf_counter  # --cpu-time switches to time.process_time (all threads' CPU time: work, not wall)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median time (ms) of `repeats` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        out = fn()
        times.append((CLOCK() - t0) * 1e3)
    return statistics.median(times), out


def sample_queries(T: int) -> torch.Tensor:
    return torch.unique(torch.cat([torch.arange(min(8, T)), torch.linspace(0, T - 1, SAMPLE).long()]))


def reference_rows(x: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Reference scores [1, len(rows), S] of the sampled queries (each keeps its causal position S - T + t)."""
    T, S = x["q"].shape[1], x["k"].shape[1]
    full = torch.full((1, len(rows), S), float("-inf"))
    for i, t in enumerate(rows.tolist()):
        s1 = S - T + t + 1  # query t sees keys [0, s1)
        if s1 > 0:
            full[:, i, :s1] = scores_ref.indexer_scores(x["q"][:, t : t + 1], x["k"][:, :s1], x["w"][:, t : t + 1])
    return full


def checks(x, qkv, scores, sel, fused, attn_out, rows) -> dict[str, bool]:
    """Which ops agree with their references on the sampled queries."""
    ref_scores = reference_rows(x, rows)
    ref_sel = topk_ref.topk_indices(ref_scores, TOPK)
    q, k, v = qkv
    ref_attn = attn_ref.sparse_attention(q[:, rows], k, v, fused[:, rows])

    def selection_ok(sel_rows: torch.Tensor) -> bool:
        return check_selection(sel_rows, ref_scores, TOPK) is None and same_selection(sel_rows, ref_sel, ref_scores)

    return {
        "indexer": error_ratio(scores[:, rows], ref_scores) <= TOL,
        "topk": selection_ok(sel[:, rows]),
        "fused": selection_ok(fused[:, rows]),
        "attention": error_ratio(attn_out[:, rows], ref_attn) <= TOL,
    }


def flop_floor(T: int, S: int, hi: int = HI, di: int = DI) -> float:
    """(indexer + sparse attention FLOPs) / dense causal attention FLOPs, for an indexer of hi heads of dim di."""
    seen = torch.clamp(torch.arange(T) + (S - T) + 1, min=0, max=S).double()  # keys each query may see
    pairs, selected = seen.sum().item(), seen.clamp(max=TOPK).sum().item()
    return (2 * hi * di * pairs + 4 * H * D * selected) / (4 * H * D * pairs)


def bench_length(x: dict[str, torch.Tensor], backend: str, repeats: int) -> dict[str, object]:
    T, S = x["q"].shape[1], x["k"].shape[1]
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, n, H, D, generator=g) for n in (T, S, S))
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [1, H, L, D] views, as a model passes them
    row = {"T": T}
    row["sdpa"], _ = timed(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True), repeats)
    row["indexer"], scores = timed(lambda: kernels.indexer_scores(x["q"], x["k"], x["w"], backend=backend), repeats)
    row["topk"], sel = timed(lambda: kernels.topk_indices(scores, TOPK, backend=backend), repeats)
    row["fused"], fused = timed(lambda: kernels.indexer_topk(x["q"], x["k"], x["w"], TOPK, backend=backend), repeats)
    row["attention"], out = timed(lambda: kernels.sparse_attention(q, k, v, fused, backend=backend), repeats)
    row["ok"] = checks(x, (q, k, v), scores, sel, fused, out, sample_queries(T))
    row["floor"] = flop_floor(T, S, *x["q"].shape[2:])
    return row


def fmt(row: dict[str, object], name: str) -> str:
    return f"{row[name]:9.1f}" if row["ok"][name] else f"{'FAIL':>9}"


HEADER = (
    f"{'L':>6} {'mode':>12} {'sdpa ms':>9} {'indexer':>9} {'top-k':>9} {'idx+topk':>9} {'sparse':>9} "
    f"{'DSA ms':>9} {'ratio':>7} {'floor':>7}"
)


def table_line(mode: str, r: dict[str, object]) -> str:
    total = r["fused"] + r["attention"]
    cells = " ".join(fmt(r, n) for n in ("indexer", "topk", "fused", "attention"))
    ok = r["ok"]["fused"] and r["ok"]["attention"]
    ratio = f"{total / r['sdpa']:7.2f}" if ok else f"{'n/a':>7}"
    dsa = f"{total:9.1f}" if ok else f"{'FAIL':>9}"
    return f"{r['T']:6d} {mode:>12} {r['sdpa']:9.1f} {cells} {dsa} {ratio} {r['floor']:7.2f}"


def bench_training(backend: str, repeats: int) -> None:
    """Forward + backward at the quick preset's training size: the fast path against the reference's autograd.

    Sparse attention only: with a gradient at this size the CPU indexer_scores runs the reference graph itself
    (faster than any recompute, see its README), so timing it would compare the reference with itself."""
    B, T, h, d, k = 16, 256, 4, 32, 32
    g = torch.Generator().manual_seed(0)
    q, kk, v = (torch.randn(B, T, h, d, generator=g, requires_grad=True) for _ in range(3))
    x = INDEXER_INPUTS["trained_like"](B, T, T, HI, DI)
    idx = kernels.indexer_topk(x["q"], x["k"], x["w"], k, backend=backend)
    cases = {
        f"sparse_attention B={B} T={T} H={h} D={d} k={k}": (
            lambda b: kernels.sparse_attention(q, kk, v, idx, backend=b),
            (q, kk, v),
        ),
    }
    print(f"\n{'forward + backward':<44} {'reference ms':>13} {backend + ' ms':>9} {'speed-up':>9} {'check':>6}")
    for name, (fn, inputs) in cases.items():

        def step(b, fn=fn, inputs=inputs):
            out = fn(b)
            return out, torch.autograd.grad(out, inputs, torch.ones_like(out))

        t_ref, (o_ref, g_ref) = timed(lambda step=step: step("reference"), repeats)
        t_new, (o_new, g_new) = timed(lambda step=step: step(backend), repeats)
        ok = error_ratio(o_new, o_ref) <= TOL and all(
            error_ratio(a, b) <= TOL for a, b in zip(g_new, g_ref, strict=True)
        )
        speed = f"{t_ref / t_new:8.2f}x" if ok else f"{'n/a':>9}"
        print(f"{name:<44} {t_ref:13.1f} {t_new:9.1f} {speed} {'ok' if ok else 'FAIL':>6}")


def describe_device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    native = (
        "compiled C kernels" if _native.library() is not None else f"torch fallback ({_native.unavailable_reason()})"
    )
    return (
        f"device: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {native}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--modes", nargs="+", choices=list(INDEXER_INPUTS), help="default: all without --checkpoint")
    parser.add_argument(
        "--checkpoint", nargs="+", help="captured indexer inputs (q, k, w) to use instead of synthetic ones"
    )
    parser.add_argument("--backend", default="cpu", choices=["cpu", "reference", "triton"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch (and kernel) threads; default: torch's choice")
    parser.add_argument("--no-training", action="store_true", help="skip the forward + backward table")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time instead of wall time: on a machine shared with other jobs this measures "
        "work rather than time slices (needs OMP_WAIT_POLICY=PASSIVE so idle threads do not spin)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_device())
    clock = "CPU" if args.cpu_time else "wall"
    setup = f"H={H} D={D} HI={HI} DI={DI} k={TOPK} fp32, batch 1, causal"
    print(f"{setup}; {clock} time, median of {args.repeats} after warm-up\n")
    modes = args.modes if args.modes is not None else ([] if args.checkpoint else list(INDEXER_INPUTS))
    workloads = [(mode, lambda L, m=mode: INDEXER_INPUTS[m](1, L, L, HI, DI)) for mode in modes]
    lengths = args.lengths
    if args.checkpoint:
        captured = [load_indexer_inputs(path) for path in args.checkpoint]
        lengths = sorted({x["q"].shape[1] for x in captured})
        for i, (path, x) in enumerate(zip(args.checkpoint, captured, strict=True)):
            hi, di = x["q"].shape[2:]
            print(f"captured {i}: {path} (HI={hi}, DI={di}, T={x['q'].shape[1]})")
            workloads.append((f"captured {i}", lambda L, x=x: {n: t[:1].contiguous() for n, t in x.items()}))
        print()
    print(HEADER)
    for L in lengths:
        for mode, make in workloads:
            x = make(L)
            if x["q"].shape[1] == L:
                print(table_line(mode, bench_length(x, args.backend, args.repeats)), flush=True)
    if not args.no_training:
        bench_training(args.backend, args.repeats)


if __name__ == "__main__":
    main()
