"""Phase 3 on an existing run, timed, with the acceptance table of issue 13.

    python benchmarks/phase3.py --root DIR --run-id ID [--steps design train evaluate] [--report-only]

Runs the optimize phase's library steps (design -> train every candidate and the reference -> evaluate) on a run
that has finished training (and, for the Phase 2 annotations, the patterns phase), then prints, per model: family,
plan, attention + indexer multiply-adds per token at 4T (and how many times fewer than DSA's), measured whole-model
forward at T and 4T with the speed-up over DSA and over dense, the paired loss ratio to the reference at T (mean
over content types, and the highest lower bound of a content type's interval), recall of dense attention mass, and
whether it meets the targets; then the cost model at T, 4T, 8192 and 32K. The CPU and threads are printed first.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sparselens.optimize.evaluate import evaluate  # noqa: E402
from sparselens.optimize.finetune import train_design, train_reference  # noqa: E402
from sparselens.optimize.phase3 import design, read_designs  # noqa: E402
from sparselens.runs import run_preset  # noqa: E402
from sparselens.storage import RunStore  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--steps", nargs="+", default=["design", "train", "evaluate"])
    parser.add_argument("--report-only", action="store_true", help="print the tables of a finished Phase 3 only")
    args = parser.parse_args(argv)
    store = RunStore(args.root, args.run_id)
    preset = run_preset(store)
    if args.report_only:
        names = ("phase3_candidates", "phase3_quality", "phase3_costs")
        report({name: store.read_table(name) for name in names}, preset)
        seconds = store.read_manifest()["phases"].get("optimize", {}).get("seconds")
        print(f"optimize phase wall time in the run's manifest: {seconds} s (target <= 720)")
        return 0
    isa = "avx512f" if "avx512f" in open("/proc/cpuinfo").read() else "avx2 or less"
    print(f"CPU: {cpu_model()} ({isa}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    seconds = {}
    t0 = time.perf_counter()
    if "design" in args.steps:
        designs = design(store, preset)
        seconds["design"] = time.perf_counter() - t0
        for d in designs:
            print(f"design {d.name} ({d.family}): {d.plan.label()} -- {d.rationale}")
    if "train" in args.steps:
        t1 = time.perf_counter()
        dsa = store.load_model("dsa")
        train_reference(store, preset)
        for d in read_designs(store):
            train_design(store, preset, dsa, d)
        seconds["train"] = time.perf_counter() - t1
    if "evaluate" in args.steps:
        t1 = time.perf_counter()
        tables = evaluate(store, preset)
        seconds["evaluate"] = time.perf_counter() - t1
        report(tables, preset)
    seconds["total"] = time.perf_counter() - t0
    print("Phase 3 wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + " (target total <= 720)")
    return 0


def report(tables: dict[str, pd.DataFrame], preset) -> None:
    t = preset.train.seq_len
    s = tables["phase3_candidates"]
    fwd = [f"forward_ms_{n}" for n in preset.optimize.time_lengths]
    cols = ["candidate", "family", "attention_macs_4t", "macs_vs_dsa_4t", *fwd, "speedup_vs_dsa", "speedup_vs_dense"]
    cols += ["attention_ms_core", "ratio_reference_t", "ratio_reference_worst_low_t", "ratio_reference_4t"]
    cols += ["recall_t", *[c for c in s.columns if c.startswith("task_")], "meets_targets"]
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        print("\nCandidates (targets: macs_vs_dsa_4t >= 2, speedup_vs_dsa >= 1.25, speedup_vs_dense > 1,")
        print("ratio_reference_t <= 1.01 with every content type's interval low <= 1.02,")
        print("task_drop_worst <= 0.02: answer accuracy on every synthetic task within 2 points of the reference's)")
        print(s[cols].to_string(index=False))
        q = tables["phase3_quality"]
        q = q[q["seq_len"] == t].pivot(index="model", columns="content_type", values="ratio_reference")
        print(f"\nLoss ratio to the reference per content type at T = {t} (paired, same samples):")
        print(q.to_string())
        c = tables["phase3_costs"]
        c = c[(c["mode"] == "prefill") & (c["category"] == "attention")]
        print("\nAttention + indexer multiply-adds per token (prefill mean), by length:")
        print(c.pivot(index="model", columns="length", values="value").to_string())
    met = s[s["meets_targets"] & ~s["family"].isin(["dense", "dsa", "reference"])]
    print(f"\nCandidates meeting the cost, clock, loss and task targets: {list(met['candidate']) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
