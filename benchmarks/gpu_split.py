"""Where the Triton sparse attention's time goes at the acceptance size: building the selection lists from the
indices (bitmap + touched-block lists) against the attention kernel itself, per selection mode and tile shape.

    python benchmarks/gpu_split.py OUT.txt [--modes local trained_like random]
"""

import argparse
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "benchmarks")
import gpu_check as gc  # noqa: E402

from sparselens.kernels.sparse_attention import reference as attn_ref  # noqa: E402
from sparselens.kernels.sparse_attention import triton as attn_triton  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--modes", nargs="+", default=["local", "trained_like", "random"])
    args = ap.parse_args()
    gc.ARGS = argparse.Namespace(budget_s=1e9)
    L, H, D = gc.L, gc.H, gc.D
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, L, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    _, sdpa = gc.bench_ms(lambda: F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True))
    gc.say(f"{torch.cuda.get_device_name()} SDPA causal {sdpa:.2f} ms")
    scale = D**-0.5
    for mode in args.modes:
        idx = gc.make_selection(mode)
        _, canon = gc.bench_ms(lambda: attn_ref.canonical_indices(idx, L))
        ci = attn_ref.canonical_indices(idx, L)
        for bm, bn in [(64, 32), (64, 64), (128, 64)]:
            _, build = gc.bench_ms(lambda: attn_triton.build_block_lists(ci, L, L, bm, bn))
            lists = attn_triton.build_block_lists(ci, L, L, bm, bn)
            _, kern = gc.bench_ms(lambda: attn_triton.sparse_attention_fwd(q, k, v, lists, scale))
            _, total = gc.bench_ms(lambda: attn_triton.sparse_attention(q, k, v, idx))
            gc.say(f"  {mode:>12} BM={bm} BN={bn}: canonical {canon:.2f} ms, lists {build:.2f} ms, kernel {kern:.2f} ms "
                   f"(={sdpa / kern:.2f}x SDPA), op total {total:.2f} ms (={sdpa / total:.2f}x)")
    open(args.out, "w").write("\n".join(gc.LINES) + "\n")
