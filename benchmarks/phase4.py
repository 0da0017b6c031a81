"""Phase 4 on a run: the benchmark (library, no Prefect) with its wall time, then the acceptance numbers: decode
ms/token at 16K context and prefill ms at 4T of the champion and of the fastest sparse model against dense.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/phase4.py --root DIR --run-id ID [--table-only]

Targets (issue 10, quick preset, 2 cores): the benchmark <= 6 minutes; decode at 16K >= 2x faster than dense (aim).
--table-only prints from an existing phase4_benchmark table without measuring. Every model's cached decode must
equal its full forward (decode_error_ratio <= 1e-5) or its speed-ups are not printed.
"""

from __future__ import annotations

import argparse
import time

from sparselens.benchmark.champion import DECODE_TOLERANCE, write_champion
from sparselens.benchmark.report import speedups
from sparselens.benchmark.run import read_environment, run_benchmark
from sparselens.benchmark.table import TABLE
from sparselens.runs import run_preset
from sparselens.storage import RunStore

BUDGET_S = 360  # the benchmark flow on quick, 2 cores
DECODE_CONTEXT = 16384


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--table-only", action="store_true", help="print from the existing table, measure nothing")
    args = ap.parse_args()
    store = RunStore(args.root, args.run_id)
    preset = run_preset(store)
    if not args.table_only:
        t0 = time.perf_counter()
        run_benchmark(store, preset, log=lambda msg: print(f"  {time.perf_counter() - t0:6.1f} s  {msg}", flush=True))
        wall = time.perf_counter() - t0
        n = store.read_table(TABLE)["model"].nunique()
        verdict = "ok" if wall <= BUDGET_S else "OVER"
        print(f"benchmark wall time {wall:.0f} s for {n} models (target <= {BUDGET_S} s on quick): {verdict}")
    df = store.read_table(TABLE)
    decision = write_champion(store, df)
    env = read_environment(store)
    print(f"host: {env['cpu_model']}, {env['cores']} cores, {env['threads']} threads, torch {env['torch_version']}")
    print(f"seconds per part: {env['seconds']}; champion: {decision.champion} ({decision.reason})")
    errors = df[df["metric"] == "decode_error_ratio"].set_index("model")["value"]
    bad = sorted(errors[errors > DECODE_TOLERANCE].index)
    ups = speedups(df)
    ups = ups[(ups["model"] != "dense") & ~ups["model"].isin(bad)]
    four_t = 4 * preset.train.seq_len
    picks = {"champion": decision.champion}
    decode = ups[(ups["metric"] == "decode_ms_per_token") & (ups["seq_len"] == DECODE_CONTEXT)]
    if not decode.empty:
        picks["fastest sparse decode"] = decode.sort_values("ms")["model"].iloc[0]
    print(f"\n{'':24} {'model':>14} {'metric':>22} {'len':>6} {'ms':>10} {'dense ms':>10} {'x dense':>8}")
    for label, model in picks.items():
        for metric, length in (("decode_ms_per_token", DECODE_CONTEXT), ("prefill_ms", four_t)):
            row = ups[(ups["model"] == model) & (ups["metric"] == metric) & (ups["seq_len"] == length)]
            if row.empty:
                print(f"{label:24} {model:>14} {metric:>22} {length:>6} {'not measured / decode check failed':>30}")
                continue
            r = row.iloc[0]
            print(f"{label:24} {model:>14} {metric:>22} {length:>6} {r.ms:10.2f} {r.dense_ms:10.2f} {r.speedup:8.2f}")
    if bad:
        print(f"decode differs from the full forward for {bad}: their speed-ups are not printed")


if __name__ == "__main__":
    main()
