"""The `capture` flow: hooked forward passes of the run's models over held-out samples, into Parquet tables."""

from __future__ import annotations

import time

from prefect import flow
from pydantic import Field

from sparselens.config import PhaseParams
from sparselens.storage import RunStore
from sparselens.tasks.capture import capture_summary_task, capture_unit_task, prepare_capture_task, start_progress_task
from sparselens.tasks.train import mark_phase


class CaptureParams(PhaseParams):
    """Optional overrides of the run's capture config (unset: the preset's values)."""

    seq_lens: list[int] | None = Field(None, description="lengths to capture, tokens (quick: 128, 256, 512, 1024)")
    n_samples: int | None = Field(None, description="validation samples per content type and length")
    topk_samples: int | None = Field(None, description="samples per content type and length kept in attention_topk")
    fresh: bool = Field(False, description="drop any earlier capture of this run and start from nothing")

    def overrides(self) -> dict:
        return {"seq_lens": self.seq_lens, "n_samples": self.n_samples, "topk_samples": self.topk_samples}


@flow(name="capture", flow_run_name="capture-{params.run_id}")
def capture(params: CaptureParams) -> dict:
    """Capture every (model, length) unit; reruns skip what is written, and a killed run resumes."""
    RunStore(params.root, params.run_id).require_exists()
    t0 = time.perf_counter()
    mark_phase(params.root, params.run_id, "capture", "running")
    try:
        overrides = params.overrides()
        units = prepare_capture_task(params.root, params.run_id, overrides, params.fresh)
        progress_id = start_progress_task(params.run_id)
        results = [
            capture_unit_task(params.root, params.run_id, model, seq_len, overrides, progress_id, i, len(units))
            for i, (model, seq_len) in enumerate(units)
        ]
        summary = capture_summary_task(params.root, params.run_id, results)
    except BaseException:
        mark_phase(params.root, params.run_id, "capture", "failed", time.perf_counter() - t0)
        raise
    mark_phase(params.root, params.run_id, "capture", "completed", time.perf_counter() - t0)
    return summary
