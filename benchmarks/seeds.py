"""How much the headline numbers move with the training seed: train and evaluate one preset's recipe under several
seeds and print mean ± sd over seeds of the DSA/dense loss ratios, indexer recall and task answer accuracy.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/seeds.py [--preset quick] [--seeds 0 1 2] [--root DIR]
                                                        [--set SECTION.FIELD=VALUE ...] [--report-only]

Each seed s is its own run, `seeds-<preset>-s<s>` under `--root`, created with `train.seed = s` (model
initialisation and the order of training batches; the validation samples are the same for every seed), trained
with the recipe (`train_all`) and evaluated (`evaluate_run`), in this process, without Prefect. A run that already
finished evaluating is reused, so an interrupted study resumes; `--report-only` only prints. Per content type at the
training length T the table shows each seed's value with its own 95% interval (over validation samples) and the
mean ± sample sd over seeds, which is the spread a reader should expect from retraining. Task accuracy comes from
the runs' `eval_tasks` tables when the evaluation writes them.

quick takes ~12 minutes per seed on 2 quiet cores; run it on a quiet machine (the tiny preset checks the script in
seconds: `python benchmarks/seeds.py --preset tiny --seeds 0 1 --root /tmp/seeds`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import pandas as pd

from sparselens.cli import section_settings
from sparselens.evaluation import evaluate_run, read_task_accuracy
from sparselens.runs import open_run, phase
from sparselens.storage import RunStore
from sparselens.training import train_all
from sparselens.viz.eval_report import ci
from sparselens.viz.markdown import markdown_table


def run_seed(root: str, preset_name: str, seed: int, overrides: dict) -> tuple[RunStore, float | None]:
    """Train and evaluate one seed's run (reusing a finished one); returns the store and the seconds it took."""
    store = RunStore(root, f"seeds-{preset_name}-s{seed}")
    sections = {k: dict(v) for k, v in overrides.items()}
    sections.setdefault("train", {})["seed"] = seed
    preset = open_run(store, preset_name, None, sections)
    if store.read_manifest().get("phases", {}).get("evaluate", {}).get("status") == "completed":
        return store, None
    t0 = time.perf_counter()
    with phase(store, "train"):
        train_all(store, preset)
    with phase(store, "evaluate"):
        evaluate_run(store, preset)
    return store, time.perf_counter() - t0


def spread(values: list[float]) -> str:
    """`mean ± sd` over seeds (sample sd; n/a below two seeds)."""
    x = np.asarray(values, dtype=np.float64)
    return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}" if x.size > 1 else f"{x.mean():.4f}"


def seed_table(rows: list[pd.DataFrame], key: list[str], value: str, low: str, high: str) -> pd.DataFrame:
    """One row per key: every seed's `value [low, high]` and mean ± sd over seeds."""
    merged = None
    for seed, df in enumerate(rows):
        cells = df.set_index(key)
        col = pd.DataFrame(
            {
                f"seed {seed}": [ci(v, lo, hi, 4) for v, lo, hi in cells[[value, low, high]].to_numpy()],
                f"_v{seed}": cells[value],
            },
            index=cells.index,
        )
        merged = col if merged is None else merged.join(col, how="inner")
    values = merged[[c for c in merged.columns if c.startswith("_v")]]
    merged["mean ± sd"] = [spread(list(r)) for r in values.to_numpy()]
    return merged.drop(columns=values.columns).reset_index()


def report(stores: list[RunStore], seeds: list[int], train_seq_len: int) -> str:
    at_t = [df[df["seq_len"] == train_seq_len] for df in (s.read_table("eval_summary") for s in stores)]
    names = {f"seed {i}": f"seed {s}" for i, s in enumerate(seeds)}

    def table(rows: list[pd.DataFrame], key: list[str], value: str, low: str, high: str) -> str:
        return markdown_table(seed_table(rows, key, value, low, high).rename(columns=names))

    t = train_seq_len
    parts = [
        f"## DSA / dense loss ratio at T = {t} (per seed: paired 95% bootstrap over validation samples)",
        table(at_t, ["content_type"], "ratio", "ratio_low", "ratio_high"),
        f"\n## Indexer recall at T = {t} (mean over layers; per seed: 95% interval over samples)",
        table(at_t, ["content_type"], "recall", "recall_low", "recall_high"),
        "\n## Oracle recall (each query's best k keys)",
        table(at_t, ["content_type"], "oracle_recall", "oracle_low", "oracle_high"),
    ]
    tasks = [read_task_accuracy(s) for s in stores]
    if all(x is not None for x in tasks):
        rows = [x[x["seq_len"] == t] for x in tasks]
        parts += ["\n## Task answer accuracy at T (per seed: Wilson 95% over answer positions)"]
        parts += [table(rows, ["content_type", "model"], "accuracy", "low", "high")]
    else:
        parts.append("\nTask answer accuracy: not measured (the runs have no eval_tasks table).")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default="./sparselens-data")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides")
    ap.add_argument("--report-only", action="store_true", help="print the tables of finished runs only")
    args = ap.parse_args(argv)
    if len(set(args.seeds)) < 2:
        ap.error("--seeds needs at least two different seeds to measure a spread")
    overrides = section_settings(args.set)
    stores, seconds = [], []
    for seed in args.seeds:
        if args.report_only:
            stores.append(RunStore(args.root, f"seeds-{args.preset}-s{seed}"))
            continue
        store, took = run_seed(args.root, args.preset, seed, overrides)
        stores.append(store)
        seconds.append(took)
        print(f"seed {seed}: {'reused' if took is None else f'{took:.0f} s'} ({store.path()})", file=sys.stderr)
    from sparselens.runs import run_preset

    t = run_preset(stores[0]).train.seq_len
    print(
        f"# {args.preset}: {len(args.seeds)} seeds {args.seeds}; machine {platform.processor() or platform.machine()}"
    )
    timed = [s for s in seconds if s is not None]
    if timed:
        print(f"train + evaluate per seed: {', '.join(f'{s:.0f} s' for s in timed)}\n")
    print(report(stores, args.seeds, t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
