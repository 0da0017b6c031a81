"""Ground truth for Phase 2's classifier: classify planted heads of every kind, per generator configuration, and
hand-labelled heads of a real run, and print how often it is right.

    python benchmarks/planted_heads.py [--n 700] [--seed 0] [--budget 0.125] [--sweep 140] [--real PATH]

Plants ``n`` maps per configuration of ``sparselens.analysis.planted.CONFIGS`` (kinds in turn), classifies each with
``classify_head`` and prints accuracy and the lowest per-kind recall of every configuration; then, for the held-out
configuration (``holdout``, kept out of all tuning of the classifier) per-kind precision and recall and the confusion
matrix (rows = planted, columns = predicted); then the hand-labelled real heads (tests/data/real_heads.npz: dense
attention of the dev-quick run's dense and DSA models at T = 128, labelled by eye; only the clear cases of the kinds
that run shows: broad, local, vertical_slash), and milliseconds per map. ``--sweep m`` adds the accuracy over ``m``
base maps at each fixed background share (noise), to show where it degrades.

Targets (issue 14): accuracy >= 0.95 on the held-out configuration and every kind's recall there >= 0.9.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sparselens.analysis import KINDS, classify_head, plant_head, random_shape
from sparselens.analysis.planted import CONFIGS, HELD_OUT, labelled_heads, plant_batch

ACCURACY_MIN, RECALL_MIN = 0.95, 0.9
REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_heads.npz"


def confusion_table(confusion: Counter) -> str:
    width = max(len(k) for k in KINDS)
    short = [k[:8] for k in KINDS]
    lines = [f"{'planted / predicted':>{width + 6}} " + " ".join(f"{s:>8}" for s in short)]
    lines += [f"{k:>{width + 6}} " + " ".join(f"{confusion[k, j]:>8}" for j in KINDS) for k in KINDS]
    return "\n".join(lines)


def recalls(confusion: Counter) -> dict[str, float]:
    planted = {k: sum(confusion[k, j] for j in KINDS) for k in KINDS}
    return {k: confusion[k, k] / planted[k] for k in KINDS if planted[k]}


def kind_table(confusion: Counter) -> str:
    lines = ["| kind | planted | predicted | precision | recall |", "|---|---:|---:|---:|---:|"]
    for k in KINDS:
        planted, predicted = sum(confusion[k, j] for j in KINDS), sum(confusion[j, k] for j in KINDS)
        precision = confusion[k, k] / predicted if predicted else float("nan")
        recall = confusion[k, k] / planted if planted else float("nan")
        lines.append(f"| {k} | {planted} | {predicted} | {precision:.3f} | {recall:.3f} |")
    return "\n".join(lines)


def classify_config(name: str, n: int, seed: int, budget: float) -> tuple[Counter, float, dict]:
    """Confusion counts, seconds classifying, and shape counts of `n` maps of configuration `name`."""
    batch = plant_batch(n, np.random.default_rng(seed), config=name)
    t0 = time.perf_counter()
    fits = [classify_head(attn, budget) for _, attn, _ in batch]
    seconds = time.perf_counter() - t0
    keys = [a.shape[1] for _, a, _ in batch]
    shapes = {"K": (min(keys), max(keys)), "Q<K": sum(a.shape[0] < a.shape[1] for _, a, _ in batch)}
    return Counter((kind, fit.kind) for (kind, _, _), fit in zip(batch, fits, strict=True)), seconds, shapes


def noise_sweep(n: int, seed: int, budget: float) -> str:
    lines = ["| noise (background share) | maps | accuracy |", "|---:|---:|---:|"]
    for noise in (0.05, 0.2, 0.3, 0.4, 0.5):
        rng = np.random.default_rng(seed + 1)
        right = 0
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            attn, _ = plant_head(kind, *random_shape(rng), rng, noise=noise)
            right += classify_head(attn, budget).kind == kind
        lines.append(f"| {noise:.2f} | {n} | {right / n:.3f} |")
    return "\n".join(lines)


def real_table(path: Path, budget: float) -> tuple[str, float]:
    heads = labelled_heads(str(path))
    lines = ["| model | content type | layer | head | labelled | classified |", "|---|---|---:|---:|---|---|"]
    right = 0
    for kind, attn, meta in heads:
        got = classify_head(attn, budget).kind
        right += got == kind
        lines.append(
            f"| {meta['model']} | {meta['content_type']} | {meta['layer']} | {meta['head']} | {kind} | {got} |"
        )
    return "\n".join(lines), right / len(heads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=700, help="planted maps per configuration (kinds in turn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.125, help="keys per query as a fraction of K")
    parser.add_argument("--sweep", type=int, default=140, help="maps per fixed noise level; 0 skips the sweep")
    parser.add_argument("--real", type=Path, default=REAL, help="hand-labelled heads (.npz)")
    args = parser.parse_args()

    for _, attn, _ in plant_batch(7, np.random.default_rng(args.seed + 99)):
        classify_head(attn, args.budget)  # warm-up
    print(f"device: CPU ({platform.processor() or platform.machine()}), numpy {np.__version__}, one process")
    print(f"{args.n} maps per configuration (seed {args.seed}), budget {args.budget} of K keys per query\n")
    lines = [
        "| configuration | role | K | Q<K | accuracy | lowest recall (kind) | ms per map |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    held: Counter | None = None
    for name in CONFIGS:
        confusion, seconds, shapes = classify_config(name, args.n, args.seed, args.budget)
        accuracy = sum(confusion[k, k] for k in KINDS) / args.n
        worst = min(recalls(confusion).items(), key=lambda kv: kv[1])
        role = "held out" if name == HELD_OUT else "tuning"
        lines.append(
            f"| {name} | {role} | {shapes['K'][0]}-{shapes['K'][1]} | {shapes['Q<K']} | {accuracy:.4f} | "
            f"{worst[1]:.3f} ({worst[0]}) | {1e3 * seconds / args.n:.1f} |"
        )
        if name == HELD_OUT:
            held = confusion
    print("\n".join(lines), "\n")
    print(f"## Held-out configuration `{HELD_OUT}`\n")
    print(kind_table(held), "\n")
    print(confusion_table(held), "\n")
    accuracy = sum(held[k, k] for k in KINDS) / args.n
    lowest = min(recalls(held).values())
    ok = accuracy >= ACCURACY_MIN and lowest >= RECALL_MIN
    print(
        f"held-out accuracy {accuracy:.4f} (target >= {ACCURACY_MIN}), lowest recall {lowest:.3f} "
        f"(target >= {RECALL_MIN}) -> {'PASS' if ok else 'FAIL'}\n"
    )
    if args.real.is_file():
        table, real_accuracy = real_table(args.real, args.budget)
        print(f"## Hand-labelled real heads ({args.real.name})\n\n{table}\n\naccuracy {real_accuracy:.3f}\n")
    if args.sweep:
        print(noise_sweep(args.sweep, args.seed, args.budget))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
