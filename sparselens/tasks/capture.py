"""Thin Prefect tasks around `sparselens.capture`: plan, one task per (model, length), summary artifacts."""

from __future__ import annotations

import dataclasses
import time
from uuid import UUID

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from sparselens.capture import capture_config, capture_unit, capture_units, prepare
from sparselens.capture.layout import table_sizes
from sparselens.runs import artifact_key
from sparselens.storage import RunStore
from sparselens.viz.markdown import markdown_table

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
PROGRESS_EVERY_S = 2.0  # at most one progress-artifact update per this many seconds


def _config(root: str, run_id: str, overrides: dict):
    store = RunStore(root, run_id)
    return store, capture_config(store.read_manifest()["config"], **overrides)


@task(name="prepare-capture", **IO)
def prepare_capture_task(root: str, run_id: str, overrides: dict, fresh: bool = False) -> list[tuple[str, int]]:
    """Record the capture plan (dropping a capture made under another plan); return the (model, length) units."""
    store, cfg = _config(root, run_id, overrides)
    kept = prepare(store, cfg, fresh)
    get_run_logger().info("capture plan %s; %s", cfg.to_dict(), "resuming" if kept else "starting from nothing")
    return capture_units(cfg)


@task(name="start-capture-progress", **IO)
def start_progress_task(run_id: str) -> UUID:
    return create_progress_artifact(
        0.0,
        key=artifact_key(run_id, "capture-progress"),
        description="capture: share of (model, length, chunk, layer) steps done",
    )


@task(name="capture-unit", task_run_name="capture-{model}-{seq_len}", **IO)
def capture_unit_task(
    root: str, run_id: str, model: str, seq_len: int, overrides: dict, progress_id: UUID | None, unit: int, n_units: int
) -> dict:
    """Capture one model at one length; files already written are skipped, so a retry resumes."""
    store, cfg = _config(root, run_id, overrides)
    logger = get_run_logger()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if progress_id is not None and (now - last[0] >= PROGRESS_EVERY_S or done == total):
            last[0] = now
            update_progress_artifact(progress_id, 100.0 * (unit + done / total) / n_units)

    result = capture_unit(store, cfg, model, seq_len, progress)
    logger.info(
        "%s T=%d: %s rows, %.1f MB in %.1f s (%d files skipped)",
        model,
        seq_len,
        sum(result.rows.values()),
        result.bytes_written / 1e6,
        result.seconds,
        result.files_skipped,
    )
    return dataclasses.asdict(result)


@task(name="capture-summary", **IO)
def capture_summary_task(root: str, run_id: str, results: list[dict]) -> dict:
    """Markdown + table artifacts: work per unit and the size of each capture table."""
    store = RunStore(root, run_id)
    units = pd.DataFrame(
        [
            {
                "model": r["model"],
                "seq_len": r["seq_len"],
                "rows": sum(r["rows"].values()),
                "mb_written": r["bytes_written"] / 1e6,
                "files_skipped": r["files_skipped"],
                "seconds": r["seconds"],
            }
            for r in results
        ]
    )
    sizes = pd.DataFrame(table_sizes(store))
    sizes["mb"] = sizes.pop("bytes") / 1e6
    seconds = float(units["seconds"].sum())
    rows = int(units["rows"].sum())
    create_markdown_artifact(
        key=artifact_key(run_id, "capture"),
        markdown=(
            f"# Capture of run `{run_id}`\n\n{rows:,} rows written in {seconds:.0f} s "
            f"({rows / max(seconds, 1e-9):,.0f} rows/s).\n\n## Tables\n\n{markdown_table(sizes, 2)}\n\n"
            f"## Units\n\n{markdown_table(units, 2)}\n"
        ),
        description="capture tables: rows, files, size; work per model and length",
    )
    create_table_artifact(key=artifact_key(run_id, "capture-tables"), table=sizes.round(3).to_dict("records"))
    return {"rows_written": rows, "seconds": seconds, "tables": sizes.to_dict("records")}
