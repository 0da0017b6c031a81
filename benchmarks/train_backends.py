"""Seconds per training step of the quick preset's DSA sparse stage through the fast kernels and through the
reference kernels, in one process, alternating, on the same batches (issue 5: the fast path must be no slower).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_backends.py [--preset quick] [--steps 6]

Both models start from the same weights (a fresh init: the step's cost does not depend on what was learnt) and
take the same optimiser steps of the sparse stage (LM loss + indexer KL on its selected keys); each step is
timed after one warm-up step. The first step's losses (same weights, same batch) must agree within 1e-4, or no
ratio is printed; later losses drift apart slightly as the two paths' rounding differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch

from sparselens.config import get_preset
from sparselens.data.dataset import train_batch
from sparselens.models import build_model
from sparselens.training.loop import step_losses
from sparselens.training.stages import stage_specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    preset = get_preset(args.preset)
    spec = stage_specs(preset.train)["sparse"]
    torch.manual_seed(0)
    weights = build_model(dataclasses.replace(preset.model, attention="dsa")).state_dict()
    models, opts, times, losses = {}, {}, {}, {}
    for backend in ("fast", "reference"):
        cfg = dataclasses.replace(
            preset.model, attention="dsa", kernel_backend=None if backend == "fast" else "reference"
        )
        model = build_model(cfg)
        model.load_state_dict(weights)
        models[backend] = model.train()
        opts[backend] = torch.optim.AdamW(model.parameters(), lr=preset.train.lr)
        times[backend], losses[backend] = [], []
    tc = preset.train
    print(f"{preset.name}: B={tc.batch_size} T={tc.seq_len} k={preset.model.topk}, sparse stage, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for step in range(args.steps + 1):
        batch, _ = train_batch(tc.mix, tc.seq_len, tc.batch_size, tc.seed, spec.first_step + step)
        for backend, model in models.items():
            t0 = time.perf_counter()
            loss = step_losses(model, spec, batch)["loss"]
            opts[backend].zero_grad(set_to_none=True)
            loss.backward()
            opts[backend].step()
            losses[backend].append(loss.item())
            if step:  # the first step warms up (compiles, allocator)
                times[backend].append(time.perf_counter() - t0)
    fast, ref = statistics.median(times["fast"]), statistics.median(times["reference"])
    print(f"{'path':<10} {'s/step (median)':>16} {'losses':>40}")
    for backend in models:
        shown = " ".join(f"{x:.4f}" for x in losses[backend][:4])
        print(f"{backend:<10} {statistics.median(times[backend]):16.3f} {shown:>40}")
    first = abs(losses["fast"][0] - losses["reference"][0])  # same weights, same batch, before any update
    if first > 1e-4 * abs(losses["reference"][0]):
        print(f"CHECK FAILED: the first losses differ by {first:.2e}; no ratio reported")
        sys.exit(1)
    print(f"first-step losses agree ({first:.1e}); fast path / reference path: {fast / ref:.2f}x the time per step "
          "(target <= 1)")  # fmt: skip


if __name__ == "__main__":
    main()
