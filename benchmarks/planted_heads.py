"""Ground truth for Phase 2's classifier: classify planted heads of every kind and print how often it is right.

    python benchmarks/planted_heads.py [--n 700] [--seed 0] [--budget 0.125] [--sweep 140]

Plants ``n`` maps (kinds in turn, shapes and parameters from ``sparselens.analysis.planted``), classifies each with
``classify_head`` and prints per-kind precision and recall, the confusion matrix (rows = planted, columns =
predicted), overall accuracy, and milliseconds per map for planting, classifying and decomposing (after a warm-up).
``--sweep m`` adds the accuracy over ``m`` maps at each fixed background share (noise), to show where it degrades.
Targets (issue 4): accuracy >= 0.95, every kind's recall >= 0.9.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import Counter

import numpy as np

from sparselens.analysis import KINDS, classify_head, decompose_head, plant_batch, plant_head, random_shape

ACCURACY_MIN, RECALL_MIN = 0.95, 0.9


def confusion_table(confusion: Counter) -> str:
    width = max(len(k) for k in KINDS)
    short = [k[:8] for k in KINDS]
    lines = [f"{'planted / predicted':>{width + 6}} " + " ".join(f"{s:>8}" for s in short)]
    lines += [f"{k:>{width + 6}} " + " ".join(f"{confusion[k, j]:>8}" for j in KINDS) for k in KINDS]
    return "\n".join(lines)


def kind_table(confusion: Counter) -> str:
    lines = ["| kind | planted | predicted | precision | recall |", "|---|---:|---:|---:|---:|"]
    for k in KINDS:
        planted, predicted = sum(confusion[k, j] for j in KINDS), sum(confusion[j, k] for j in KINDS)
        precision = confusion[k, k] / predicted if predicted else float("nan")
        recall = confusion[k, k] / planted if planted else float("nan")
        lines.append(f"| {k} | {planted} | {predicted} | {precision:.3f} | {recall:.3f} |")
    return "\n".join(lines)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=700, help="planted maps (kinds in turn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.125, help="keys per query as a fraction of K")
    parser.add_argument("--sweep", type=int, default=140, help="maps per fixed noise level; 0 skips the sweep")
    args = parser.parse_args()

    warm = plant_batch(7, np.random.default_rng(args.seed + 99))
    for _, attn, _ in warm:
        classify_head(attn, args.budget), decompose_head(attn)
    t0 = time.perf_counter()
    batch = plant_batch(args.n, np.random.default_rng(args.seed))
    t1 = time.perf_counter()
    fits = [classify_head(attn, args.budget) for _, attn, _ in batch]
    t2 = time.perf_counter()
    parts = [decompose_head(attn) for _, attn, _ in batch]
    t3 = time.perf_counter()

    confusion = Counter((kind, fit.kind) for (kind, _, _), fit in zip(batch, fits, strict=True))
    accuracy = sum(confusion[k, k] for k in KINDS) / args.n
    recall = min(confusion[k, k] / max(1, sum(confusion[k, j] for j in KINDS)) for k in KINDS)
    worst_sum = max(abs(sum(p.values()) - 1) for p in parts)
    sizes = Counter("Q<K" if a.shape[0] < a.shape[1] else "Q=K" for _, a, _ in batch)
    print(f"device: CPU ({platform.processor() or platform.machine()}), numpy {np.__version__}, one process")
    print(
        f"maps: {args.n} (seed {args.seed}), K in [64, 256], Q=K: {sizes['Q=K']}, Q<K: {sizes['Q<K']}, "
        f"budget {args.budget} of K keys per query\n"
    )
    print(kind_table(confusion), "\n")
    print(confusion_table(confusion), "\n")
    ok = accuracy >= ACCURACY_MIN and recall >= RECALL_MIN
    print(
        f"accuracy {accuracy:.4f} (target >= {ACCURACY_MIN}), lowest recall {recall:.3f} (target >= {RECALL_MIN})"
        f" -> {'PASS' if ok else 'FAIL'}"
    )
    print(f"decomposition: worst |sum - 1| = {worst_sum:.1e}")
    print(
        f"ms per map: plant {1e3 * (t1 - t0) / args.n:.2f}, classify {1e3 * (t2 - t1) / args.n:.2f}, "
        f"decompose {1e3 * (t3 - t2) / args.n:.2f}"
    )
    if args.sweep:
        print("\n" + noise_sweep(args.sweep, args.seed, args.budget))


if __name__ == "__main__":
    main()
