"""The `capture` flow: hooked forward passes of the run's models over held-out samples, into Parquet tables."""

from __future__ import annotations

from prefect import flow

from sparselens.config import CaptureParams
from sparselens.runs import phase
from sparselens.storage import RunStore
from sparselens.tasks.capture import capture_summary_task, capture_unit_task, prepare_capture_task, start_progress_task


@flow(name="capture", flow_run_name="capture-{params.run_id}")
def capture(params: CaptureParams) -> dict:
    """Capture every (model, length) unit; reruns skip what is written, and a killed run resumes."""
    root, run_id = params.root, params.run_id
    with phase(RunStore(root, run_id), "capture", params.overrides()):
        units = prepare_capture_task(root, run_id, params.fresh)
        progress_id = start_progress_task(run_id)
        results = [
            capture_unit_task(root, run_id, model, seq_len, progress_id, i, len(units))
            for i, (model, seq_len) in enumerate(units)
        ]
        return capture_summary_task(root, run_id, results)
