"""Phase 4 as one library call: every model's quality, speed, memory and cost in the `phase4_benchmark` table.

`run_benchmark(store, preset, kernel_backend)` reads the run's models (dense, dsa, every Phase 3 candidate),
measures them part by part and writes the table (atomically, replacing an earlier one) and
`benchmark/environment.json` (host, threads, torch version, seconds per part). No Prefect here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pandas as pd
import torch

from sparselens.benchmark.host import host_info
from sparselens.benchmark.models import decode_error_ratio, load_variant, model_roster
from sparselens.benchmark.quality import model_losses, quality_rows
from sparselens.benchmark.retrieval import retrieval_rows
from sparselens.benchmark.rss import measure_in_subprocess
from sparselens.benchmark.table import NO_LENGTH, TABLE, cost_rows, row, to_frame
from sparselens.benchmark.timing import held_out_tokens, time_decode, time_prefill
from sparselens.config import BenchmarkConfig, Preset
from sparselens.data.synthetic import TASKS
from sparselens.stats import Interval, median_iqr
from sparselens.storage import RunStore
from sparselens.task_accuracy import task_accuracy
from sparselens.threads import torch_threads

ENVIRONMENT_FILE = "benchmark/environment.json"
Log = Callable[[str], None]


def task_rows(model, name: str, family: str, t: int, n_samples: int, batch_size: int) -> list[dict]:
    """Answer accuracy on each synthetic task at length t (metric `task_accuracy`, content_type = task, Wilson
    interval over answer positions), on the same held-out samples for every model."""
    rows = []
    for task in TASKS:
        acc = task_accuracy(model, task, t, n_samples, batch_size)
        value = Interval(acc["accuracy"], acc["ci_low"], acc["ci_high"], acc["n_answers"])
        rows.append(row(name, family, "task_accuracy", t, value, content_type=task, interval="wilson95"))
    return rows


def quality_part(store: RunStore, cfg: BenchmarkConfig, t: int, roster: dict[str, str], backend: str | None) -> list:
    """Held-out losses (paired intervals), the retrieval grid, the decode-vs-forward check and analytic costs."""
    lengths = tuple(t * m for m in cfg.quality_multipliers)
    needles = tuple(t * m for m in cfg.retrieval_multipliers)
    losses, rows = {}, []
    check = held_out_tokens(t)[0]  # [1, T]
    for name, family in roster.items():
        model = load_variant(store, name, max(lengths + needles), backend)
        losses[name] = model_losses(model, lengths, cfg.quality_samples, cfg.batch_size)
        rows += retrieval_rows(
            model, name, family, needles, cfg.retrieval_depths, cfg.retrieval_samples, cfg.batch_size
        )
        rows.append(row(name, family, "decode_error_ratio", t, decode_error_ratio(model, check, t // 2)))
        rows += task_rows(model, name, family, t, cfg.quality_samples, cfg.batch_size)
        rows += cost_rows(name, family, model.cfg, cfg.prefill_lens, cfg.decode_contexts)
    return rows + quality_rows(losses, roster, cfg.bootstrap)


def speed_part(store: RunStore, cfg: BenchmarkConfig, roster: dict[str, str], backend: str | None) -> list:
    """Prefill ms (median, IQR) and decode ms/token (median, IQR; p90) of every model, interleaved."""
    longest = max(max(cfg.prefill_lens), max(cfg.decode_contexts) + cfg.decode_warmup + cfg.decode_tokens)
    models = {name: load_variant(store, name, longest, backend) for name in roster}
    threads = torch.get_num_threads()
    rows = []
    prefill = time_prefill(models, cfg.prefill_lens, cfg.repeats)
    decode = time_decode(models, cfg.decode_contexts, cfg.decode_tokens, cfg.decode_warmup, cfg.decode_fill_chunk)
    for metric, timings in (("prefill_ms", prefill), ("decode_ms_per_token", decode)):
        for (name, length), ms in timings.items():
            s = median_iqr(ms)
            rows.append(
                row(name, roster[name], metric, length, s["median"], low=s["q25"], high=s["q75"], n=s["n"],
                    interval="iqr", threads=threads)
            )  # fmt: skip
            if metric == "decode_ms_per_token":
                rows.append(row(name, roster[name], f"{metric}_p90", length, s["p90"], n=s["n"], threads=threads))
    return rows


def memory_part(store: RunStore, cfg: BenchmarkConfig, roster: dict[str, str], backend: str | None) -> list:
    """Peak RSS of a prefill at the longest prefill length plus decode_tokens steps, one fresh process per model."""
    length, threads = max(cfg.prefill_lens), torch.get_num_threads()
    root = store.fs.unstrip_protocol(store.root)
    rows = []
    for name, family in roster.items():
        got = measure_in_subprocess(root, store.run_id, name, length, cfg.decode_tokens, backend, threads)
        rows.append(row(name, family, "peak_rss_mb", length, got["peak_mb"], threads=threads))
        rows.append(row(name, family, "rss_baseline_mb", NO_LENGTH, got["baseline_mb"], threads=threads))
    return rows


def run_benchmark(
    store: RunStore, preset: Preset, kernel_backend: str | None = None, log: Log | None = None
) -> pd.DataFrame:
    """Measure every model of the run and write `phase4_benchmark` and the environment; return the table."""
    cfg, log = preset.benchmark, log or (lambda _msg: None)
    roster = model_roster(store, cfg.models)
    log(f"benchmarking {len(roster)} models: {', '.join(roster)}")
    seconds, rows = {}, []
    with torch_threads(cfg.threads):
        parts = [
            ("quality", lambda: quality_part(store, cfg, preset.train.seq_len, roster, kernel_backend)),
            ("speed", lambda: speed_part(store, cfg, roster, kernel_backend)),
        ]
        if cfg.rss:
            parts.append(("memory", lambda: memory_part(store, cfg, roster, kernel_backend)))
        for name, part in parts:
            t0 = time.perf_counter()
            rows += part()
            seconds[name] = round(time.perf_counter() - t0, 2)
            log(f"{name}: {seconds[name]:.1f} s")
        env = host_info() | {"kernel_backend": kernel_backend or "default", "seconds": seconds}
    table = to_frame(rows, store.run_id)
    store.write_table(TABLE, table)
    store.write_text(ENVIRONMENT_FILE, json.dumps(env, indent=2))
    return table


def read_environment(store: RunStore) -> dict:
    """What `run_benchmark` recorded about the host and how long each part took."""
    return json.loads(store.read_text(ENVIRONMENT_FILE))
