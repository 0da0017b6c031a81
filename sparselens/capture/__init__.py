"""Capture: hooked forward passes over held-out samples, reduced to per-query Parquet tables (no Prefect).

Tables (schemas in storage/schemas.py, partitioned model / seq_len / layer): `query_stats`, `attention_topk`,
`indexer_stats`, `selections`. The settings are the run's `capture` config section
(`sparselens.runs.phase_config(store, "capture")`). `capture_run(store, cfg)` does everything; flows call
`prepare` and `capture_unit` per (model, length) instead.
"""

from sparselens.capture.layout import TABLES, prepare
from sparselens.capture.runner import (
    UnitResult,
    capture_run,
    capture_summary,
    capture_unit,
    capture_units,
    layer_hooks,
)

__all__ = [
    "TABLES",
    "UnitResult",
    "capture_run",
    "capture_summary",
    "capture_unit",
    "capture_units",
    "layer_hooks",
    "prepare",
]
