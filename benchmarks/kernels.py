"""DSA kernels against dense attention on this machine: one process, one table, checked before it is timed.

For each length L (default 1024..8192; H=8, D=64, HI=4, DI=32, k=256, batch 1, fp32), each selection mode and each
number of K/V heads (`--kv-heads`, default H: multi-head) it times dense causal SDPA, then the DSA pieces on the
chosen backend: indexer scores alone (materialised [T, S]), top-k over them, the fused indexer top-k (what the
model runs), and sparse attention over the fused selection with K/V of HKV heads. DSA total = fused indexer top-k +
sparse attention; "ratio" is that over SDPA, "floor" the same ratio in FLOPs (indexer + sparse attention over dense
attention). With HKV < H the SDPA column is the faster of SDPA with `enable_gqa=True` and SDPA on K/V repeated to
H heads beforehand (the repeat not timed: the most favourable baseline). Each op is first checked against its
reference on a sample of queries (error ratio <= 1e-5, valid and equally-scored selections); an op that fails
prints FAIL, not a time, and no ratio is reported for a total that includes it. A second table gives each op's
useful GFLOP/s (indexer: 2 HI DI per causal pair; attention: 4 H D per selected key; SDPA: 4 H D per causal pair).
Warm-up calls are excluded; each time is the median of `--repeats` runs.

Further tables: `--decode` times one query (and 4) at the end of S = 16384 and 32768 keys (the incremental-decoding
shapes: indexer HI=4, DI=64, k=32, and sparse attention with k=32 and --decode-topk) against the reference; and
forward + backward at the model's training size against the reference's autograd (skip with --no-training).

Selection modes: `random` (Gaussian indexer inputs: scattered selections), `trained_like` (sinks, a local window
and clustered content, see `sparselens.kernels.workloads`), or `--checkpoint PATH [PATH ...]`: indexer inputs
captured from a trained model (`torch.save({"q": [B,T,HI,DI], "k": [B,S,DI], "w": [B,T,HI]}, PATH)`, e.g. by
`benchmarks/indexer_inputs.py`), one row each, at the captured length and indexer shape (the floor uses that
shape); `--modes` adds synthetic rows at that length beside them.

Run with `OMP_WAIT_POLICY=PASSIVE` (torch's idle OpenMP threads then sleep instead of spinning while the kernel
threads work) on an otherwise idle machine; compare ratios, not absolute times, across machines:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/kernels.py [--lengths 4096 8192] [--kv-heads 8 1] [--decode]
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
from sparselens.kernels.sparse_attention import reference as attn_ref
from sparselens.kernels.testing import check_selection, error_ratio, same_selection
from sparselens.kernels.topk import reference as topk_ref
from sparselens.kernels.workloads import INDEXER_INPUTS, load_indexer_inputs, random_indexer_inputs

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


def selection_ok(sel: torch.Tensor, ref_scores: torch.Tensor, k: int) -> bool:
    ref_sel = topk_ref.topk_indices(ref_scores, k)
    return check_selection(sel, ref_scores, k) is None and same_selection(sel, ref_sel, ref_scores)


def pairs_and_selected(T: int, S: int, k: int) -> tuple[float, float]:
    """Causal (query, key) pairs and selected keys (min(k, allowed) per query) for T queries at the end of S keys."""
    seen = torch.clamp(torch.arange(T) + (S - T) + 1, min=0, max=S).double()  # keys each query may see
    return seen.sum().item(), seen.clamp(max=k).sum().item()


def sdpa_baseline(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> float:
    """ms of causal SDPA on q [1,T,H,D], k/v [1,S,HKV,D]: with HKV < H the faster of enable_gqa and pre-repeated K/V."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [1, heads, L, D] views, as a model passes them
    if k.shape[2] == q.shape[2]:
        return timed(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True), repeats)[0]
    gqa = timed(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True), repeats)[0]
    G = q.shape[2] // k.shape[2]
    ke, ve = kh.repeat_interleave(G, dim=1), vh.repeat_interleave(G, dim=1)  # [1, H, L, D]
    return min(gqa, timed(lambda: F.scaled_dot_product_attention(qh, ke, ve, is_causal=True), repeats)[0])


def bench_length(x: dict[str, torch.Tensor], hkv: int, backend: str, repeats: int) -> dict[str, object]:
    T, S = x["q"].shape[1], x["k"].shape[1]
    hi, di = x["q"].shape[2:]
    g = torch.Generator().manual_seed(T)
    q = torch.randn(1, T, H, D, generator=g)
    k, v = (torch.randn(1, S, hkv, D, generator=g) for _ in range(2))
    row: dict[str, object] = {"T": T, "hkv": hkv, "sdpa": sdpa_baseline(q, k, v, repeats)}
    row["indexer"], scores = timed(lambda: kernels.indexer_scores(x["q"], x["k"], x["w"], backend=backend), repeats)
    row["topk"], sel = timed(lambda: kernels.topk_indices(scores, TOPK, backend=backend), repeats)
    row["fused"], fused = timed(lambda: kernels.indexer_topk(x["q"], x["k"], x["w"], TOPK, backend=backend), repeats)
    row["attention"], out = timed(lambda: kernels.sparse_attention(q, k, v, fused, backend=backend), repeats)
    rows = sample_queries(T)
    ref_scores = reference_rows(x, rows)
    ref_attn = attn_ref.sparse_attention(q[:, rows], k, v, fused[:, rows])
    row["ok"] = {
        "indexer": error_ratio(scores[:, rows], ref_scores) <= TOL,
        "topk": selection_ok(sel[:, rows], ref_scores, TOPK),
        "fused": selection_ok(fused[:, rows], ref_scores, TOPK),
        "attention": error_ratio(out[:, rows], ref_attn) <= TOL,
    }
    pairs, selected = pairs_and_selected(T, S, TOPK)
    row["flops"] = {"indexer": 2 * hi * di * pairs, "attention": 4 * H * D * selected, "sdpa": 4 * H * D * pairs}
    row["flops"]["fused"] = row["flops"]["indexer"]
    row["floor"] = (row["flops"]["indexer"] + row["flops"]["attention"]) / row["flops"]["sdpa"]
    return row


def fmt(row: dict[str, object], name: str) -> str:
    return f"{row[name]:9.1f}" if row["ok"][name] else f"{'FAIL':>9}"


HEADER = (
    f"{'L':>6} {'mode':>12} {'HKV':>4} {'sdpa ms':>9} {'indexer':>9} {'top-k':>9} {'idx+topk':>9} {'sparse':>9} "
    f"{'DSA ms':>9} {'ratio':>7} {'floor':>7}"
)
GFLOPS_HEADER = f"{'L':>6} {'mode':>12} {'HKV':>4} {'sdpa':>9} {'indexer':>9} {'idx+topk':>9} {'sparse':>9}"


def table_line(mode: str, r: dict[str, object]) -> str:
    total = r["fused"] + r["attention"]
    cells = " ".join(fmt(r, n) for n in ("indexer", "topk", "fused", "attention"))
    ok = r["ok"]["fused"] and r["ok"]["attention"]
    ratio = f"{total / r['sdpa']:7.2f}" if ok else f"{'n/a':>7}"
    dsa = f"{total:9.1f}" if ok else f"{'FAIL':>9}"
    return f"{r['T']:6d} {mode:>12} {r['hkv']:4d} {r['sdpa']:9.1f} {cells} {dsa} {ratio} {r['floor']:7.2f}"


def gflops_line(mode: str, r: dict[str, object]) -> str:
    """Useful GFLOP/s of each op (FLOPs counted as in the module docstring, over its measured time)."""
    rate = {n: r["flops"][n] / r[n] / 1e6 for n in ("sdpa", "indexer", "fused", "attention")}
    cells = " ".join(f"{rate[n]:9.1f}" if n == "sdpa" or r["ok"][n] else f"{'FAIL':>9}" for n in rate)
    return f"{r['T']:6d} {mode:>12} {r['hkv']:4d} {cells}"


def _decode_indexer(S: int, T: int, backend: str, topk: int, reps: int) -> tuple[float, float, bool, torch.Tensor]:
    """(reference ms, backend ms, selection ok) of the fused indexer top-k (HI=4, DI=64, k=32), and the
    backend's selection of `topk` keys for the attention row."""
    x = random_indexer_inputs(1, T, S, 4, 64, seed=S + T)
    t_ref, want = timed(lambda: topk_ref.indexer_topk(x["q"], x["k"], x["w"], 32), reps)
    t_new, got = timed(lambda: kernels.indexer_topk(x["q"], x["k"], x["w"], 32, backend=backend), reps)
    ref_scores = scores_ref.indexer_scores(x["q"], x["k"], x["w"])
    ok = check_selection(got, ref_scores, 32) is None and same_selection(got, want, ref_scores)
    return t_ref, t_new, ok, kernels.indexer_topk(x["q"], x["k"], x["w"], topk, backend=backend)


def _decode_attention(S: int, hkv: int, idx: torch.Tensor, backend: str, reps: int) -> tuple[float, float, bool]:
    """(reference ms, backend ms, output ok) of sparse attention for idx [1, T, k] over S keys of hkv heads."""
    g = torch.Generator().manual_seed(S)
    q = torch.randn(1, idx.shape[1], H, D, generator=g)
    k, v = (torch.randn(1, S, hkv, D, generator=g) for _ in range(2))
    t_ref, o_ref = timed(lambda: attn_ref.sparse_attention(q, k, v, idx), reps)
    t_new, o_new = timed(lambda: kernels.sparse_attention(q, k, v, idx, backend=backend), reps)
    return t_ref, t_new, error_ratio(o_new, o_ref) <= TOL


def bench_decode(backend: str, kv_heads: list[int], lengths: list[int], topk: int, repeats: int) -> None:
    """One query (and four) at the end of S keys: fused indexer top-k (HI=4, DI=64, k=32) and sparse attention
    (H, D, the given k) against the reference, checked first; times are medians of max(repeats, 20) calls."""
    reps = max(repeats, 20)
    print(f"\ndecode: T queries at keys S-T..S-1; indexer HI=4 DI=64 k=32; sparse attention H={H} D={D} k={topk}")
    print(
        f"{'S':>6} {'T':>3} {'HKV':>4} {'idx+topk ref':>13} {backend:>8} {'sparse ref':>11} {backend:>8} {'check':>6}"
    )
    for S in lengths:
        for T in (1, 4):
            i_ref, i_new, sel_ok, idx = _decode_indexer(S, T, backend, topk, reps)
            for hkv in kv_heads:
                a_ref, a_new, ok = _decode_attention(S, hkv, idx, backend, reps)
                print(f"{S:6d} {T:3d} {hkv:4d} {i_ref:13.3f} {i_new:8.3f} {a_ref:11.3f} {a_new:8.3f} "
                      f"{'ok' if ok and sel_ok else 'FAIL':>6}", flush=True)  # fmt: skip


def bench_training(backend: str, kv_heads: list[int], repeats: int) -> None:
    """Forward + backward at the quick preset's training size: the fast path against the reference's autograd.

    Sparse attention only: with a gradient at this size the CPU indexer_scores runs the reference graph itself
    (faster than any recompute, see its README), so timing it would compare the reference with itself."""
    B, T, h, d, k = 16, 256, 4, 32, 32
    x = INDEXER_INPUTS["trained_like"](B, T, T, HI, DI)
    idx = kernels.indexer_topk(x["q"], x["k"], x["w"], k, backend=backend)
    print(f"\n{'forward + backward':<50} {'reference ms':>13} {backend + ' ms':>9} {'speed-up':>9} {'check':>6}")
    for hkv in sorted({min(hh, h) for hh in kv_heads}):
        g = torch.Generator().manual_seed(0)
        q = torch.randn(B, T, h, d, generator=g, requires_grad=True)
        kk, v = (torch.randn(B, T, hkv, d, generator=g, requires_grad=True) for _ in range(2))

        def step(b, q=q, kk=kk, v=v):
            out = kernels.sparse_attention(q, kk, v, idx, backend=b)
            return out, torch.autograd.grad(out, (q, kk, v), torch.ones_like(out))

        t_ref, (o_ref, g_ref) = timed(lambda step=step: step("reference"), repeats)
        t_new, (o_new, g_new) = timed(lambda step=step: step(backend), repeats)
        ok = error_ratio(o_new, o_ref) <= TOL and all(
            error_ratio(a, b) <= TOL for a, b in zip(g_new, g_ref, strict=True)
        )
        speed = f"{t_ref / t_new:8.2f}x" if ok else f"{'n/a':>9}"
        name = f"sparse_attention B={B} T={T} H={h} HKV={hkv} D={d} k={k}"
        print(f"{name:<50} {t_ref:13.1f} {t_new:9.1f} {speed} {'ok' if ok else 'FAIL':>6}")


def describe_device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"device: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {_native.describe()}, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--modes", nargs="+", choices=list(INDEXER_INPUTS), help="default: all without --checkpoint")
    parser.add_argument("--kv-heads", type=int, nargs="+", default=[H], help=f"K/V heads, divisors of H={H}")
    parser.add_argument(
        "--checkpoint", nargs="+", help="captured indexer inputs (q, k, w) to use instead of synthetic ones"
    )
    parser.add_argument("--backend", default="cpu", choices=["cpu", "reference", "triton"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch (and kernel) threads; default: torch's choice")
    parser.add_argument("--no-training", action="store_true", help="skip the forward + backward table")
    parser.add_argument("--decode", action="store_true", help="add the decoding table (T = 1 and 4)")
    parser.add_argument("--decode-lengths", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--decode-topk", type=int, default=32, help="k of the decoding table's sparse attention")
    parser.add_argument("--only-decode", action="store_true", help="the decoding table alone")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time instead of wall time: on a machine shared with other jobs this measures "
        "work rather than time slices (needs OMP_WAIT_POLICY=PASSIVE so idle threads do not spin)",
    )
    args = parser.parse_args()
    bad = [n for n in args.kv_heads if n <= 0 or H % n]
    if bad:
        parser.error(f"--kv-heads {bad}: each must divide H={H} (1 = MQA, {H} = MHA)")
    return args


def main() -> None:
    args = parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_device())
    clock = "CPU" if args.cpu_time else "wall"
    print(f"H={H} D={D} HI={HI} DI={DI} k={TOPK} fp32, batch 1, causal; {clock} time, median of {args.repeats} after "
          "warm-up\n")  # fmt: skip
    if args.only_decode:
        return bench_decode(args.backend, args.kv_heads, args.decode_lengths, args.decode_topk, args.repeats)
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
    done = []
    for L in lengths:
        for mode, make in workloads:
            x = make(L)
            if x["q"].shape[1] == L:
                for hkv in args.kv_heads:
                    done.append((mode, bench_length(x, hkv, args.backend, args.repeats)))
                    print(table_line(*done[-1]), flush=True)
    print(f"\nuseful GFLOP/s\n{GFLOPS_HEADER}")
    for mode, row in done:
        print(gflops_line(mode, row))
    if args.decode:
        bench_decode(args.backend, args.kv_heads, args.decode_lengths, args.decode_topk, args.repeats)
    if not args.no_training:
        bench_training(args.backend, args.kv_heads, args.repeats)


if __name__ == "__main__":
    main()
