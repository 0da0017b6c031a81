"""The tidy `phase4_benchmark` table: one row per model x metric x length x content type, with value, interval and n.

`METRICS` lists every metric with its unit; `row` builds one row; `cost_rows` adds the analytic FLOPs, decode bytes
and cache bytes (analysis/cost.py) that need no measurement. `interval` says what low/high are: `t95` (mean, t
interval), `bootstrap95` (paired bootstrap over samples), `wilson95` (accuracy), `iqr` (timing quartiles), `none`.
"""

from __future__ import annotations

import math

import pandas as pd

from sparselens.analysis.cost import cache_bytes_per_token, decode_bytes, token_costs
from sparselens.config import ModelConfig
from sparselens.stats import Interval

TABLE = "phase4_benchmark"
NO_LENGTH = 0  # seq_len of a metric that does not depend on a length (cache bytes per token)
ALL = "all"  # content_type of a metric not split by content type
NEEDLE = "needle"  # content_type of the retrieval grid rows

METRICS = {  # name -> unit
    "loss": "nats/token",
    "bits_per_byte": "bits/byte",
    "loss_diff_vs_dense": "nats/token",
    "loss_diff_vs_dsa": "nats/token",
    "loss_ratio_vs_dense": "ratio",
    "loss_ratio_vs_dsa": "ratio",
    "retrieval_accuracy": "fraction",
    "retrieval_answer_loss": "nats/token",
    "task_accuracy": "fraction",
    "decode_error_ratio": "ratio",
    "prefill_ms": "ms",
    "decode_ms_per_token": "ms",
    "decode_ms_per_token_p90": "ms",
    "cache_bytes_per_token": "bytes",
    "cache_kv_bytes_per_token": "bytes",
    "cache_index_key_bytes_per_token": "bytes",
    "peak_rss_mb": "MiB",
    "rss_baseline_mb": "MiB",
    "prefill_macs_per_token": "MACs",
    "prefill_attention_macs_per_token": "MACs",
    "decode_macs_per_token": "MACs",
    "decode_attention_macs_per_token": "MACs",
    "decode_bytes_per_token": "bytes",
}
COLUMNS = [
    "run_id",
    "model",
    "family",
    "metric",
    "seq_len",
    "content_type",
    "depth",
    "unit",
    "value",
    "low",
    "high",
    "n",
    "interval",
    "threads",
]


def row(
    model: str,
    family: str,
    metric: str,
    seq_len: int,
    value: float | Interval,
    content_type: str = ALL,
    low: float = math.nan,
    high: float = math.nan,
    n: int = 1,
    interval: str = "none",
    depth: float = math.nan,
    threads: int | None = None,
) -> dict:
    """One table row (run_id is added when the table is written); an Interval gives value, low, high and n."""
    if metric not in METRICS:
        raise ValueError(f"unknown benchmark metric {metric!r}; add it to METRICS with its unit")
    if isinstance(value, Interval):
        value, low, high, n = value.value, value.low, value.high, value.n
    return {
        "model": model,
        "family": family,
        "metric": metric,
        "seq_len": int(seq_len),
        "content_type": content_type,
        "depth": depth,
        "unit": METRICS[metric],
        "value": float(value),
        "low": float(low),
        "high": float(high),
        "n": int(n),
        "interval": interval,
        "threads": threads,
    }


def cost_rows(
    name: str, family: str, cfg: ModelConfig, prefill_lens: tuple[int, ...], contexts: tuple[int, ...]
) -> list[dict]:
    """Analytic rows: MACs per token (all and attention + indexer) at each prefill length and decode context,
    bytes read per decoded token, and the cache's bytes per position (K/V, indexer keys, total).

    Adaptive-k layers are counted at their k_max (an upper bound)."""
    rows = []
    for length in prefill_lens:
        costs = token_costs(cfg, length, "prefill")
        rows.append(row(name, family, "prefill_macs_per_token", length, costs["total"]))
        rows.append(row(name, family, "prefill_attention_macs_per_token", length, costs["attention"]))
    for length in contexts:
        costs = token_costs(cfg, length, "decode")
        rows.append(row(name, family, "decode_macs_per_token", length, costs["total"]))
        rows.append(row(name, family, "decode_attention_macs_per_token", length, costs["attention"]))
        rows.append(row(name, family, "decode_bytes_per_token", length, decode_bytes(cfg, length)["total"]))
    cache = cache_bytes_per_token(cfg)
    rows.append(row(name, family, "cache_bytes_per_token", NO_LENGTH, cache["total"]))
    rows.append(row(name, family, "cache_kv_bytes_per_token", NO_LENGTH, cache["kv"]))
    rows.append(row(name, family, "cache_index_key_bytes_per_token", NO_LENGTH, cache["index_keys"]))
    return rows


def to_frame(rows: list[dict], run_id: str) -> pd.DataFrame:
    """Rows as the table's DataFrame (columns in schema order)."""
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "run_id"])
    df.insert(0, "run_id", run_id)
    df["threads"] = df["threads"].astype("Int32")
    return df
