"""Foundation acceptance: run the `quick` preset end to end and print quality, recall and wall time.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/quick_run.py [--root DIR] [--run-id ID] [--report-only]

Runs `sparselens run --preset quick` in a subprocess (timed, Prefect included), then reads the run's tables and
prints, per content type at the training length, DSA loss / equal-step dense loss (target <= 1.03) beside each
model's answer accuracy on the synthetic tasks with its 95% Wilson interval (target >= 0.9 for both models), and
per layer the indexer recall at k = T/8 against the oracle (target >= 0.85, or within 0.05 of an oracle below 0.9).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import pandas as pd

from sparselens.runs import run_preset
from sparselens.storage import RunStore
from sparselens.task_accuracy import copy_head_scores
from sparselens.viz.markdown import markdown_table

LOSS_RATIO_MAX = 1.03
TASK_ACCURACY_MIN = 0.9
TIME_MAX_S = 15 * 60


def recall_ok(recall: float, oracle: float) -> bool:
    return recall >= 0.85 or (oracle < 0.9 and recall >= oracle - 0.05)


def accuracy_cell(row) -> str:
    return f"{row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"


def task_table(losses: pd.DataFrame, tasks: pd.DataFrame, t: int) -> pd.DataFrame:
    """Per content type at length t: dense and DSA loss, their ratio, and each model's answer accuracy [95% CI]."""
    table = losses[losses.seq_len == t].pivot_table(index="content_type", columns="model", values="loss")
    table["ratio"] = table["dsa"] / table["dense"]
    at_t = tasks[tasks.seq_len == t].assign(cell=lambda d: [accuracy_cell(r) for r in d.itertuples()])
    cells = at_t.pivot(index="content_type", columns="model", values="cell").add_prefix("accuracy_")
    counts = at_t[at_t.model == "dense"].set_index("content_type")[["n_answers", "n_samples"]].astype(str)
    return table.join(cells).join(counts).fillna("").reset_index()


def accuracy_ok(tasks: pd.DataFrame, t: int) -> bool:
    return bool((tasks[tasks.seq_len == t].accuracy >= TASK_ACCURACY_MIN).all())


def print_copy_heads(store: RunStore, t: int, top: int = 4) -> None:
    """The heads with the highest induction score (mass on the needed key at induction answers) per model."""
    print(f"\n## Copy heads at T={t}: attention on the needed key at induction answers (top {top} per model)\n")
    for name in ("dense", "dsa"):
        scores = copy_head_scores(store.load_model(name), "induction", t, 8)
        print(f"{name}:\n\n{markdown_table(scores.nlargest(top, 'needed_score'))}\n")


def report(store: RunStore, wall_s: float | None) -> bool:
    preset = run_preset(store)
    t = preset.train.seq_len
    losses, recall = store.read_table("eval_loss"), store.read_table("indexer_recall")
    table = losses.pivot_table(index=["content_type", "seq_len"], columns="model", values="loss").reset_index()
    table["ratio"] = table["dsa"] / table["dense"]
    print(f"## Loss (nats/byte), dense = equal-step baseline; target at T={t}: ratio <= {LOSS_RATIO_MAX}\n")
    print(markdown_table(table))
    tasks = store.read_table("eval_tasks")
    print(
        f"\n## At T={t}: loss ratio and answer accuracy [95% Wilson interval] on the synthetic tasks "
        f"(target >= {TASK_ACCURACY_MIN}, both models); n_answers over n_samples held-out samples\n"
    )
    print(markdown_table(task_table(losses, tasks, t)))
    by_len = tasks.pivot_table(index=["content_type", "seq_len"], columns="model", values="accuracy").reset_index()
    print("\n## Answer accuracy by length\n")
    print(markdown_table(by_len))
    print_copy_heads(store, t)
    at_t = recall[recall.seq_len == t]
    layers = at_t.groupby("layer")[["recall", "oracle_recall"]].mean().reset_index()
    layers["ok"] = [recall_ok(r, o) for r, o in zip(layers.recall, layers.oracle_recall, strict=True)]
    print(f"\n## Indexer recall at T={t}, k={preset.model.topk} (mean over content types, queries t >= k)\n")
    print(markdown_table(layers))
    recall_by_len = recall.groupby(["seq_len", "layer"])[["recall", "oracle_recall"]].mean().reset_index()
    print("\n## Recall by length\n")
    print(markdown_table(recall_by_len))
    ratio_ok = bool((table[table.seq_len == t]["ratio"] <= LOSS_RATIO_MAX).all())
    phases = store.read_manifest()["phases"]
    seconds = {
        name: phases.get(name, {}).get("seconds") or 0.0
        for name in ("train", "evaluate", "capture", "interpret", "patterns")
    }
    train_eval = seconds["train"] + seconds["evaluate"]
    time_ok = train_eval <= TIME_MAX_S
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; phases (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + f"; train+evaluate {train_eval:.0f} s; whole CLI run {'n/a' if wall_s is None else f'{wall_s:.0f} s'}"
    )
    tasks_ok = accuracy_ok(tasks, t)
    print(
        f"loss ratio ok: {ratio_ok}; task accuracy ok: {tasks_ok}; recall ok: {bool(layers.ok.all())}; "
        f"train+evaluate <= 15 min: {time_ok}"
    )
    return ratio_ok and tasks_ok and bool(layers.ok.all()) and time_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="./sparselens-data")
    ap.add_argument("--run-id", help="default: quick-bench-<timestamp> (required with --report-only)")
    ap.add_argument("--report-only", action="store_true", help="only print the tables of an existing run")
    args = ap.parse_args()
    if args.report_only and not args.run_id:
        ap.error("--report-only needs --run-id: the run whose tables to print")
    args.run_id = args.run_id or f"quick-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    wall = None
    if not args.report_only:
        t0 = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "sparselens.cli",
            "run",
            "--preset",
            "quick",
            "--root",
            args.root,
            "--run-id",
            args.run_id,
        ]
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
    return 0 if report(RunStore(args.root, args.run_id), wall) else 1


if __name__ == "__main__":
    sys.exit(main())
