"""One prepared GPU run: Triton DSA kernels checked against the reference, then timed against SDPA (and Flex).

    python benchmarks/gpu_check.py benchmarks/results/gpu_check_<gpu>.txt [--kv-heads 1 4 16] [--budget-s 230]
    python benchmarks/gpu_check.py OUT --smoke-cpu    # tiny sizes through the Triton interpreter, no GPU needed

Sections, each case guarded (an exception prints and the run goes on), in order of importance:
 1. correctness in fp32 (IEEE products) at mid sizes with odd lengths, T != S, repeats, -1 and rows with nothing
    selected: indexer scores and sparse attention forward + backward (MHA, GQA and MQA K/V) against the
    reference (error ratio <= 1e-5), indexer top-k validity;
 2. the acceptance size L=32768, H=16, D=128, k=2048 in bf16, for each `--kv-heads` HKV (default 1 = MQA, 4 =
    GQA, 16 = MHA): selections from the Triton indexer + top-k over trained-like and random indexer inputs, the
    sparse attention output of sampled queries against the fp32 reference (<= 1e-2, bf16 inputs), then forward
    time against causal SDPA (for HKV < H the faster of SDPA with enable_gqa and SDPA on K/V repeated
    beforehand) for a few tile shapes (rows = queries x the group's heads), TFLOP/s and the fraction of key
    tiles touched; forward + backward for the best tile shape;
 3. FlexAttention (MHA) with the same exact selection mask, when present and time is left (~1 min compile).
A speed-up is only reported for a case whose correctness check passed. Everything printed also goes to the
output file. Planned to finish in ~4 minutes on an H100/H200 including Triton compiles; later sections are
skipped once --budget-s is spent.
"""

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparselens.kernels import indexer_scores, indexer_topk, sparse_attention
from sparselens.kernels.indexer_scores import reference as scores_ref
from sparselens.kernels.sparse_attention import reference as attn_ref
from sparselens.kernels.testing import check_selection, error_ratio, same_selection
from sparselens.kernels.topk import reference as topk_ref
from sparselens.kernels.workloads import (
    random_indexer_inputs,
    random_indices,
    sliding_window_indices,
    trained_like_indexer_inputs,
)

L, H, D, K = 32768, 16, 128, 2048  # acceptance size
HI, DI = 8, 64  # indexer heads and dim at that size
DEV = "cuda"
TILES = [(64, 64), (64, 32), (64, 16), (128, 64), (128, 32)]  # (BLOCK_M, BLOCK_N) tried for the forward
MID_INDEXER = [(2, 1000, 1500, 4, 64), (1, 777, 777, 5, 48)]  # (B, T, S, HI, DI) for the fp32 checks
MID_ATTENTION = [(2, 777, 1001, 4, 4, 64, 128), (1, 513, 2049, 8, 2, 128, 300), (1, 300, 700, 16, 1, 128, 200)]
KV_HEADS = [1, 16, 4]  # (B, T, S, H, HKV, D, K) above; K/V heads timed at the acceptance size: MQA, MHA, GQA
T0 = time.perf_counter()
LINES: list[str] = []


def say(msg: str = "") -> None:
    print(msg, flush=True)
    LINES.append(msg)


def guarded(name: str, fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - one failing case must not stop the run
        say(f"  {name}: ERROR {type(err).__name__}: {err}")
        say("    " + traceback.format_exc().strip().splitlines()[-3].strip())
        return None
    finally:
        sync()


def sync() -> None:
    try:
        if DEV == "cuda":
            torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 - a sticky CUDA error is reported by the case that caused it
        say(f"  (synchronize failed: {err})")


def bench_ms(fn: Callable[[], object], reps: int = 5) -> tuple[float, float]:
    """(first-call ms incl. compile, median ms of reps after two warm-ups), timed with CUDA events."""
    t = time.perf_counter()
    fn()
    sync()
    first = (time.perf_counter() - t) * 1e3
    fn()
    times = []
    for _ in range(reps):
        if DEV != "cuda":
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return first, sorted(times)[len(times) // 2]


def check_fp32() -> None:
    say("\n[1] correctness, fp32, vs reference (error ratio rms(err)/rms(ref), limit 1e-5)")
    dev = DEV
    for B, T, S, hi, di in MID_INDEXER:
        q, k, w = (x.to(dev).requires_grad_() for x in random_indexer_inputs(B, T, S, hi, di).values())
        ref, out = scores_ref.indexer_scores(q, k, w), indexer_scores(q, k, w, backend="triton")
        g = torch.randn_like(ref)
        errs = [error_ratio(out, ref)] + [
            error_ratio(a, b)
            for a, b in zip(torch.autograd.grad(out, (q, k, w), g), torch.autograd.grad(ref, (q, k, w), g), strict=True)
        ]
        ok = max(errs) <= 1e-5
        say(f"  indexer_scores B={B} T={T} S={S} HI={hi} DI={di}: fwd {errs[0]:.1e} dq/dk/dw "
            f"{errs[1]:.1e}/{errs[2]:.1e}/{errs[3]:.1e} {'ok' if ok else 'FAIL'}")  # fmt: skip
        sel = indexer_topk(q.detach(), k.detach(), w.detach(), 100, backend="triton")
        problem = check_selection(sel, ref.detach(), 100)
        if problem is None and not same_selection(sel, topk_ref.topk_indices(ref.detach(), 100), ref.detach()):
            problem = "selected scores differ from the reference top-k"
        say(f"  indexer_topk k=100: {'ok' if problem is None else 'FAIL: ' + problem}")
    for B, T, S, h, hkv, d, kk in MID_ATTENTION:
        q = torch.randn(B, T, h, d, device=dev, requires_grad=True)
        k, v = (torch.randn(B, S, hkv, d, device=dev, requires_grad=True) for _ in range(2))
        idx = random_indices(B, T, S + 5, kk, seed=1).to(dev)
        idx[0, :7] = -1
        ref, out = attn_ref.sparse_attention(q, k, v, idx), sparse_attention(q, k, v, idx, backend="triton")
        g = torch.randn_like(ref)
        errs = [error_ratio(out, ref)] + [
            error_ratio(a, b)
            for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), strict=True)
        ]
        ok = max(errs) <= 1e-5
        say(f"  sparse_attention B={B} T={T} S={S} H={h} HKV={hkv} D={d} K={kk}: fwd {errs[0]:.1e} dq/dk/dv "
            f"{errs[1]:.1e}/{errs[2]:.1e}/{errs[3]:.1e} {'ok' if ok else 'FAIL'}")  # fmt: skip


def make_selection(mode: str) -> torch.Tensor:
    if mode == "local":  # each query's K most recent keys: the best case for tile skipping
        return sliding_window_indices(1, L, L, K, device=DEV)
    make = trained_like_indexer_inputs if mode == "trained_like" else random_indexer_inputs
    x = {n: t.to(DEV) for n, t in make(1, L, L, HI, DI, seed=0).items()}
    t = time.perf_counter()
    idx = indexer_topk(x["q"], x["k"], x["w"], K, backend="triton")
    sync()
    say(f"  {mode}: selection (Triton indexer + torch.topk) {time.perf_counter() - t:.1f} s")
    rows = torch.linspace(0, L - 1, 24).long().to(DEV)
    ref = scores_ref.indexer_scores(x["q"][:, rows], x["k"], x["w"][:, rows], causal=False)
    ref = ref.masked_fill(torch.arange(L, device=DEV)[None, None] > rows[None, :, None], float("-inf"))
    problem = check_selection(idx[:, rows], ref, K)
    say(f"  {mode}: top-k of sampled queries {'ok' if problem is None else 'FAIL: ' + problem}")
    return idx


def bench_size(mode: str, idx: torch.Tensor, qkv, sdpa_ms: float) -> tuple[float, int, int] | None:
    from sparselens.kernels.sparse_attention import triton as attn_triton  # after TRITON_INTERPRET is settled

    q, k, v = qkv
    hkv = k.shape[2]
    tag = f"{mode} HKV={hkv}"
    rows = torch.linspace(0, L - 1, 48).long().to(DEV)
    useful = 4 * H * D * (idx >= 0).sum().item()  # FLOPs of exact sparse attention
    dense = 4 * H * D * L * (L + 1) / 2
    best = None
    for bm, bn in TILES:
        if time.perf_counter() - T0 > ARGS.budget_s - 60:
            say(f"  {tag} BM={bm} BN={bn}: skipped (time budget)")
            continue
        attn_triton.BLOCK_M, attn_triton.BLOCK_N = bm, bn

        def run(bm=bm, bn=bn):
            first, ms = bench_ms(lambda: sparse_attention(q, k, v, idx, backend="triton"))
            out = sparse_attention(q, k, v, idx, backend="triton")
            ref = attn_ref.sparse_attention(q[:, rows].float(), k.float(), v.float(), idx[:, rows])
            err = error_ratio(out[:, rows].float(), ref)
            bq, _ = attn_triton.group_blocks(H, hkv)  # queries per tile
            lists = attn_triton.build_block_lists(attn_ref.canonical_indices(idx, L), L, L, bq, bn)
            causal_tiles = sum(-(-min(L, (i + 1) * bq) // bn) for i in range(-(-L // bq)))
            touched = lists["q_cnt"].sum().item() / causal_tiles
            ok = err <= 1e-2
            speed = f"{sdpa_ms / ms:5.2f}x" if ok else "  n/a"
            say(f"  {tag:>18} BM={bm:<3} BN={bn:<3} ({bq} queries/tile) first {first:8.0f} ms  {ms:8.2f} ms  "
                f"speed-up {speed}  {useful / ms / 1e9:6.1f} TFLOP/s useful ({dense / ms / 1e9:6.1f} dense-equiv)  "
                f"tiles touched {touched:.2f}  err {err:.1e} {'ok' if ok else 'FAIL'}")  # fmt: skip
            return ms if ok else None

        ms = guarded(f"{tag} BM={bm} BN={bn}", run)
        if ms is not None and (best is None or ms < best[0]):
            best = (ms, bm, bn)
    if best is None:
        return None
    verdict = "PASS" if sdpa_ms / best[0] >= 3 else "below 3x"
    say(f"  {tag}: best forward {best[0]:.2f} ms (BM={best[1]}, BN={best[2]}) = {sdpa_ms / best[0]:.2f}x SDPA "
        f"[target >= 3x: {verdict}]")  # fmt: skip
    return best


def bench_backward(tag: str, idx: torch.Tensor, qkv, best: tuple[float, int, int]) -> None:
    """Forward + backward of the sparse kernel at its best tile shape against SDPA's (grouped K/V for HKV < H)."""
    from sparselens.kernels.sparse_attention import triton as attn_triton

    attn_triton.BLOCK_M, attn_triton.BLOCK_N = best[1], best[2]
    qg, kg, vg = (t.detach().requires_grad_() for t in qkv)
    go = torch.randn_like(qg)
    gqa = kg.shape[2] != qg.shape[2]

    def fwd_bwd_sparse():
        torch.autograd.grad(sparse_attention(qg, kg, vg, idx, backend="triton"), (qg, kg, vg), go)

    def fwd_bwd_sdpa():
        qh, kh, vh = (t.transpose(1, 2) for t in (qg, kg, vg))  # [1, heads, L, D]
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=gqa)
        torch.autograd.grad(out, (qg, kg, vg), go.transpose(1, 2))

    _, ms_s = bench_ms(fwd_bwd_sparse, reps=3)
    _, ms_d = bench_ms(fwd_bwd_sdpa, reps=3)
    say(f"  {tag}: forward+backward sparse {ms_s:.2f} ms vs SDPA {ms_d:.2f} ms = {ms_d / ms_s:.2f}x")


def sdpa_ms(qkv) -> float:
    """Causal SDPA forward; for HKV < H the faster of enable_gqa and K/V repeated to H heads (repeat not timed)."""
    q, k, v = (t.transpose(1, 2) for t in qkv)  # [1, heads, L, D]
    if k.shape[1] == q.shape[1]:
        return bench_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))[1]
    gqa = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))[1]
    G = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    rep = bench_ms(lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True))[1]
    say(f"  SDPA causal HKV={k.shape[1]}: enable_gqa {gqa:.2f} ms, on repeated K/V {rep:.2f} ms")
    return min(gqa, rep)


def bench_flex(idx: torch.Tensor, qkv, sdpa_ms: float) -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from sparselens.kernels.sparse_attention import triton as attn_triton

    words = attn_triton.build_block_lists(attn_ref.canonical_indices(idx, L), L, L, 64, 64)["words"][0]  # [L, NW]

    def selected(b, h, q_idx, kv_idx):
        return ((words[q_idx, kv_idx // 32] >> (kv_idx % 32)) & 1) == 1

    t = time.perf_counter()
    mask = create_block_mask(selected, B=None, H=None, Q_LEN=L, KV_LEN=L, device=DEV)
    flex = torch.compile(flex_attention)
    q, k, v = (x.transpose(1, 2) for x in qkv)  # [1, H, L, D]
    first, ms = bench_ms(lambda: flex(q, k, v, block_mask=mask), reps=3)
    say(f"  flex_attention (exact selection mask): mask+compile {time.perf_counter() - t:.0f} s, "
        f"{ms:.2f} ms = {sdpa_ms / ms:.2f}x SDPA")  # fmt: skip


def time_selection(mode: str, idx: torch.Tensor, qkv: dict, sdpa: dict) -> None:
    """Forward (a few tile shapes) and forward + backward (the best) of one selection, for every K/V head count."""
    for hkv in ARGS.kv_heads:
        if sdpa[hkv] is None:
            continue
        best = guarded(f"{mode} HKV={hkv} timing", lambda: bench_size(mode, idx, qkv[hkv], sdpa[hkv]))  # noqa: B023
        if best is not None and time.perf_counter() - T0 < ARGS.budget_s - 45:
            guarded("backward", lambda: bench_backward(f"{mode} HKV={hkv}", idx, qkv[hkv], best))  # noqa: B023


def main() -> None:
    name = torch.cuda.get_device_name() if DEV == "cuda" else "CPU smoke run (Triton interpreter, tiny sizes)"
    say(f"gpu_check: {name} | torch {torch.__version__} | "
        f"triton {__import__('triton').__version__} | CUDA {torch.version.cuda}")  # fmt: skip
    if ARGS.skip_fp32:
        say("\n[1] fp32 checks skipped (--skip-fp32)")
    else:
        guarded("fp32 checks", check_fp32)
    say(f"\n[2] L={L} H={H} D={D} k={K} bf16 (indexer HI={HI} DI={DI}); elapsed {time.perf_counter() - T0:.0f} s")
    g = torch.Generator(device=DEV).manual_seed(0)
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32  # the interpreter computes bf16 wrongly
    q = torch.randn(1, L, H, D, device=DEV, dtype=dtype, generator=g)
    qkv, sdpa = {}, {}
    for hkv in ARGS.kv_heads:
        qkv[hkv] = [q] + [torch.randn(1, L, hkv, D, device=DEV, dtype=dtype, generator=g) for _ in range(2)]
        sdpa[hkv] = guarded(f"sdpa HKV={hkv}", lambda hkv=hkv: sdpa_ms(qkv[hkv]))
        if sdpa[hkv] is not None:
            dense_tflops = 4 * H * D * L * (L + 1) / 2 / sdpa[hkv] / 1e9
            say(f"  SDPA causal HKV={hkv}: {sdpa[hkv]:.2f} ms = {dense_tflops:.1f} TFLOP/s")
    last_idx = None
    for mode in ARGS.modes:
        if time.perf_counter() - T0 > ARGS.budget_s - 60:
            say(f"  {mode}: skipped (time budget)")
            continue
        idx = guarded(f"{mode} selection", lambda mode=mode: make_selection(mode))
        if idx is None:
            continue
        last_idx = idx if mode == "trained_like" else last_idx
        time_selection(mode, idx, qkv, sdpa)
    say(f"\n[3] FlexAttention; elapsed {time.perf_counter() - T0:.0f} s")
    if ARGS.no_flex or last_idx is None or sdpa.get(H) is None or time.perf_counter() - T0 > ARGS.budget_s - 70:
        say("  skipped (--no-flex, no selection, or time budget)")
    else:
        guarded("flex", lambda: bench_flex(last_idx, qkv[H], sdpa[H]))
    say(f"\ndone in {time.perf_counter() - T0:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Check and time the Triton DSA kernels on a CUDA GPU.")
    parser.add_argument("out", help="file to write the report to (e.g. benchmarks/results/gpu_check_h100.txt)")
    parser.add_argument("--budget-s", type=float, default=230.0, help="skip later sections past this many seconds")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile is slow)")
    parser.add_argument("--skip-fp32", action="store_true", help="skip section 1 (its many compiles take ~2 min)")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["trained_like", "random"],
        choices=["trained_like", "random", "local"],
        help="selections to time at the acceptance size (local: a sliding window of k keys, the tile-skipping "
        "best case)",
    )
    parser.add_argument(
        "--kv-heads", type=int, nargs="+", default=KV_HEADS, help="K/V heads at the acceptance size, divisors of 16"
    )
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny sizes on the CPU through the interpreter")
    ARGS = parser.parse_args()
    if ARGS.smoke_cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before the Triton kernels are imported (lazily, on first use)
        DEV, L, H, D, K, HI, DI = "cpu", 200, 4, 32, 24, 2, 16
        MID_INDEXER, MID_ATTENTION = [(1, 37, 53, 3, 20)], [(1, 37, 53, 4, 2, 16, 12), (1, 37, 53, 4, 1, 16, 12)]
        TILES = TILES[:2]
        ARGS.kv_heads = [1, 2, 4]  # MQA, GQA, MHA at the smoke run's H = 4
    elif not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU (or --smoke-cpu); run benchmarks/kernels.py for the CPU")
    if any(n <= 0 or H % n for n in ARGS.kv_heads):
        sys.exit(f"--kv-heads {ARGS.kv_heads}: each must divide H={H}")
    try:
        main()
    finally:
        with open(ARGS.out, "w") as fh:
            fh.write("\n".join(LINES) + "\n")
        print(f"report written to {ARGS.out}")
