"""Where the Triton sparse attention's forward time goes at the acceptance size (L=32768, H=16, D=128, k=2048,
bf16): building the selection lists from the indices (bitmap + touched-block lists) against the attention kernel
itself, per selection mode and tile shape, with the fraction of causal key tiles touched.

    python benchmarks/gpu_split.py OUT.txt [--modes local trained_like random]

"kernel" is what the tile kernel alone would give if the lists came for free (e.g. built once per layer and
shared by forward and backward); "op" is the whole `sparse_attention` call, lists included.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import gpu_check as gc  # noqa: E402

from sparselens.kernels import sparse_attention  # noqa: E402
from sparselens.kernels.sparse_attention import triton as attn_triton  # noqa: E402

TILES = [(64, 32), (64, 64), (128, 64)]


def split(mode: str, idx: torch.Tensor, qkv: tuple, sdpa_ms: float) -> None:
    q, k, v = qkv
    L, D = q.shape[1], q.shape[3]
    for bm, bn in TILES:
        attn_triton.BLOCK_M, attn_triton.BLOCK_N = bm, bn  # multi-head: bm queries per tile
        _, build = gc.bench_ms(lambda bm=bm, bn=bn: attn_triton.build_block_lists(idx, L, L, bm, bn))
        lists = attn_triton.build_block_lists(idx, L, L, bm, bn)
        _, kern = gc.bench_ms(lambda lists=lists: attn_triton.sparse_attention_fwd(q, k, v, lists, D**-0.5))
        _, total = gc.bench_ms(lambda: sparse_attention(q, k, v, idx, backend="triton"))
        causal_tiles = sum(-(-min(L, (i + 1) * bm) // bn) for i in range(-(-L // bm)))
        touched = lists["q_cnt"].sum().item() / causal_tiles
        gc.say(
            f"  {mode:>12} BM={bm:<3} BN={bn:<3} tiles touched {touched:.2f}: lists {build:5.2f} ms, kernel "
            f"{kern:6.2f} ms ({sdpa_ms / kern:4.2f}x SDPA), op {total:6.2f} ms ({sdpa_ms / total:4.2f}x SDPA)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--modes", nargs="+", default=["local", "trained_like", "random"])
    args = ap.parse_args()
    gc.ARGS = argparse.Namespace(budget_s=1e9)
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = tuple(torch.randn(1, gc.L, gc.H, gc.D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    _, sdpa_ms = gc.bench_ms(lambda: F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in qkv), is_causal=True))
    gc.say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: SDPA causal {sdpa_ms:.2f} ms")
    try:
        for mode in args.modes:
            split(mode, gc.make_selection(mode), qkv, sdpa_ms)
    finally:
        Path(args.out).write_text("\n".join(gc.LINES) + "\n")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("gpu_split needs a CUDA GPU")
    main()
