"""Capture acceptance: time the capture phase of a trained run and print rows/s and bytes written per table.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/capture.py --root DIR --run-id ID [--keep] [--seq-lens 128,256]

Copies the run's manifest and models into a scratch directory (the source run's capture and tables are never
touched), runs the library capture (no Prefect) there with the run's preset defaults, then reads every table back
once with pandas. `--keep` copies the run's capture files too and resumes, showing how much a rerun skips.
Target for the quick preset on a 2-core CPU: <= 300 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import pandas as pd
import torch
from phase2 import copy_run  # benchmarks/ is on sys.path when this runs as a script

from sparselens.capture import TABLES, capture_run
from sparselens.runs import phase_config
from sparselens.storage import RunStore
from sparselens.viz.markdown import markdown_table

TIME_MAX_S = 5 * 60


def _table_bytes(store: RunStore, name: str) -> int:
    path = store.table_path(name).replace("file://", "")
    return sum(store.fs.size(p) for p in store.fs.find(path) if p.endswith(".parquet"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--keep", action="store_true", help="keep existing capture files (measures a resume)")
    ap.add_argument("--seq-lens", default=None, help="comma-separated lengths overriding the preset's")
    args = ap.parse_args()
    src = RunStore(args.root, args.run_id)
    src.require_exists()
    store = copy_run(src, tempfile.mkdtemp(prefix="sparselens-capture-bench-"), data=args.keep)
    print(f"run {args.run_id} copied to {store.run_dir}")
    overrides = {"seq_lens": [int(t) for t in args.seq_lens.split(",")]} if args.seq_lens else {}
    cfg = phase_config(store, "capture", overrides)
    t0 = time.perf_counter()
    results = capture_run(store, cfg, fresh=not args.keep)
    wall = time.perf_counter() - t0
    units = pd.DataFrame(
        [
            {
                "model": r.model,
                "seq_len": r.seq_len,
                "rows": sum(r.rows.values()),
                "mb_written": r.bytes_written / 1e6,
                "files_skipped": r.files_skipped,
                "seconds": r.seconds,
            }
            for r in results
        ]
    )
    print(
        f"## Capture of run {args.run_id}: {cfg.seq_lens}, {cfg.n_samples} samples x "
        f"{len(cfg.content_types)} content types per length\n"
    )
    print(markdown_table(units, digits=2))
    rows = []
    for name in TABLES:
        t1 = time.perf_counter()
        n = len(store.read_table(name))
        rows.append(
            {
                "table": name,
                "rows": n,
                "mb_on_disk": _table_bytes(store, name) / 1e6,
                "read_s": time.perf_counter() - t1,
            }
        )
    tables = pd.DataFrame(rows)
    print("\n## Tables\n")
    print(markdown_table(tables, digits=2))
    total_rows = int(units["rows"].sum())
    written = float(units["mb_written"].sum())
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"capture wall time {wall:.1f} s; rows written {total_rows:,} ({total_rows / wall:,.0f} rows/s); "
        f"bytes written {written * 1e6:,.0f} ({written / wall:.2f} MB/s)"
    )
    ok = wall <= TIME_MAX_S
    print(f"time ok (<= {TIME_MAX_S} s): {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
