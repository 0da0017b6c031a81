"""Time the Triton sparse attention's preprocessing: canonical_indices and build_block_lists, before and now.

    python benchmarks/block_lists.py [--preset cpu|gpu] [--out FILE]

Per selection (a sliding window and a top-k of random scores, both laid out as `topk_indices` returns them):
canonical_indices before/now, then for a few tile shapes the scatter construction that build_block_lists
replaced, the plain-torch build, and on CUDA the bitmap kernel from canonical indices and from the raw ones (what
the forward now does, skipping canonical_indices). A time is only printed where the output equals the scatter
construction's bit for bit. The kernel is left out on CPU (the Triton interpreter is far too slow at these sizes).
"""

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))  # the earlier build, kept there
from test_sparse_attention_lists import _build_block_lists_scatter  # noqa: E402

from sparselens.kernels.sparse_attention import triton as attn_triton  # noqa: E402
from sparselens.kernels.sparse_attention.reference import canonical_indices  # noqa: E402
from sparselens.kernels.workloads import sliding_window_indices  # noqa: E402

SIZES = {  # problem sizes per device (not run presets: those live in sparselens/config/presets.py)
    "cpu": dict(T=4096, S=4096, K=256, reps=3),
    "gpu": dict(T=32768, S=32768, K=2048, reps=10),  # the acceptance size of benchmarks/gpu_check.py
}
BLOCKS = [(64, 32), (64, 64), (128, 64)]


def canonical_indices_before(indices: torch.Tensor, S: int) -> torch.Tensor:
    """canonical_indices as it was before its fast-path check was trimmed (same results)."""
    idx = indices.long()
    idx = idx.masked_fill((idx < 0) | (idx >= S), -1)
    if idx.shape[-1] <= 1:
        return idx
    a, b = idx[..., :-1], idx[..., 1:]
    if bool((((b > a) & (a >= 0)) | (b < 0)).all()):
        return idx
    srt = idx.masked_fill(idx < 0, S).sort(dim=-1).values
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    return srt.masked_fill(dup | (srt == S), -1)


def median_ms(fn, reps: int) -> float:
    """Median wall time of reps calls after one warm-up (which also compiles), synchronising on CUDA."""
    fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def same_lists(got: dict, want: dict) -> bool:
    return all(torch.equal(got[n], want[n]) for n in ("words", "q_cnt", "q_list", "kv_cnt", "kv_list"))


def selections(T: int, S: int, K: int, device: str) -> dict[str, torch.Tensor]:
    """Indices [1, T, K]: ascending then -1, as `topk_indices` returns them."""
    g = torch.Generator(device=device).manual_seed(0)
    scores = torch.rand(T, S, device=device, generator=g)  # [T, S]
    topk = scores.topk(K, dim=-1).indices.sort(dim=-1).values  # [T, K]
    return {"window": sliding_window_indices(1, T, S, K).to(device), "topk_random": topk.unsqueeze(0)}


def main(preset: str, out: str | None) -> None:
    p = SIZES[preset]
    T, S, K, reps = p["T"], p["S"], p["K"], p["reps"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [f"{name}, T={T} S={S} K={K}, median of {reps} (ms)"]
    for sel, raw in selections(T, S, K, device).items():
        canon = canonical_indices(raw, S)
        ok = torch.equal(canon, canonical_indices_before(raw, S))
        before, now = (median_ms(partial(f, raw, S), reps) for f in (canonical_indices_before, canonical_indices))
        lines.append(f"{sel:>12} canonical_indices: before {before:.2f}, now {now:.2f}" + ("" if ok else " FAIL"))
        for BM, BN in BLOCKS:
            want = _build_block_lists_scatter(canon, T, S, BM, BN)
            build = partial(attn_triton.build_block_lists, T=T, S=S, BM=BM, BN=BN)
            builds = {"scatter": partial(_build_block_lists_scatter, canon, T, S, BM, BN)}
            builds["torch"] = partial(build, canon, kernel=False)
            if device == "cuda":
                builds["kernel"] = partial(build, canon, kernel=True)
                builds["kernel_raw"] = partial(build, raw, kernel=True)
            cells = []
            for label, fn in builds.items():
                good = same_lists(fn(), want)
                cells.append(f"{label} {median_ms(fn, reps):.2f}" if good else f"{label} FAIL")
            lines.append(f"{sel:>12} lists BM={BM} BN={BN}: " + ", ".join(cells))
            print(lines[-1], flush=True)
    print("\n".join(lines))
    if out:
        open(out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=list(SIZES), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    main(args.preset, args.out)
