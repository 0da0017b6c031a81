"""Thin Prefect tasks around `sparselens.capture`: plan, one task per (model, length), summary artifacts."""

from __future__ import annotations

import dataclasses
import time
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from sparselens.capture import capture_summary, capture_unit, capture_units, prepare
from sparselens.runs import artifact_key, phase_config
from sparselens.storage import RunStore
from sparselens.tasks import publish
from sparselens.tasks.progress import StepProgress

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
PROGRESS_EVERY_S = 2.0  # at most one progress-artifact update per this many seconds


@task(name="prepare-capture", **IO)
def prepare_capture_task(root: str, run_id: str, fresh: bool = False) -> list[tuple[str, int]]:
    """Record the capture plan (dropping a capture made under another plan); return the (model, length) units."""
    store = RunStore(root, run_id)
    cfg = phase_config(store, "capture")
    kept = prepare(store, cfg, fresh)
    get_run_logger().info("capture plan %s; %s", cfg, "resuming" if kept else "starting from nothing")
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
    root: str, run_id: str, model: str, seq_len: int, progress_id: UUID | None, unit: int, n_units: int
) -> dict:
    """Capture one model at one length; files already written are skipped, so a retry resumes."""
    store = RunStore(root, run_id)
    last = [0.0]
    bar = StepProgress(run_id, f"capture-{model}-{seq_len}", f"capture {model} T={seq_len}", None, "parts", False)

    def progress(done: int, total: int) -> None:
        bar.update(done, total=total)
        now = time.monotonic()
        if progress_id is not None and (now - last[0] >= PROGRESS_EVERY_S or done == total):
            last[0] = now
            update_progress_artifact(progress_id, 100.0 * (unit + done / total) / n_units)

    result = capture_unit(store, phase_config(store, "capture"), model, seq_len, progress)
    bar.finish(f"{sum(result.rows.values())} rows, {result.files_skipped} files kept")
    get_run_logger().info(
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
    summary = capture_summary(RunStore(root, run_id), results)
    publish(run_id, "capture", summary)
    return summary.result
