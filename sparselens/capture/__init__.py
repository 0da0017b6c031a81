"""Capture: hooked forward passes over held-out samples, reduced to per-query Parquet tables (no Prefect).

Tables (schemas in storage/schemas.py, partitioned model / seq_len / layer): `query_stats`, `attention_topk`,
`indexer_stats`, `selections`. `capture_run(store, cfg)` does everything; flows call `prepare` and
`capture_unit` per (model, length) instead.
"""

from sparselens.capture.config import CAPTURE_PRESETS, CaptureConfig, capture_config
from sparselens.capture.layout import TABLES, prepare
from sparselens.capture.runner import UnitResult, capture_run, capture_unit, capture_units, layer_hooks

__all__ = [
    "CAPTURE_PRESETS",
    "TABLES",
    "CaptureConfig",
    "UnitResult",
    "capture_config",
    "capture_run",
    "capture_unit",
    "capture_units",
    "layer_hooks",
    "prepare",
]
