"""The `monitor` flow: time the run's champion against its dense model, keep the samples, publish a verdict.

A regression is a finding: the flow completes, returns `regressed: True`, publishes its artifacts and emits
`sparselens.champion.regressed` (every run emits `sparselens.champion.checked`); `sparselens phase monitor`
then exits 3.
"""

from __future__ import annotations

import time
from typing import ClassVar

from prefect import flow
from pydantic import Field

from sparselens.config import PhaseParams
from sparselens.flows.benchmark import Backend
from sparselens.storage import RunStore
from sparselens.tasks.monitor import monitor_task, publish_monitor_task
from sparselens.tasks.train import mark_phase


class MonitorParams(PhaseParams):
    """Monitor parameters; empty fields keep the run's monitor config."""

    PHASE: ClassVar[str] = "monitor"

    samples: int | None = Field(None, ge=1, description="alternating timed samples per batch")
    kernel_backend: Backend | None = Field(None, description="run both models on these kernels (default: fastest)")


@flow(name="monitor", flow_run_name="monitor-{params.run_id}")
def monitor(params: MonitorParams) -> dict:
    """One check of the champion; returns the verdict record (`regressed` says whether to alarm)."""
    RunStore(params.root, params.run_id).require_exists()
    root, run_id = params.root, params.run_id
    t0 = time.perf_counter()
    mark_phase(root, run_id, "monitor", "running")
    try:
        result = monitor_task(root, run_id, params.overrides(), params.kernel_backend)
        publish_monitor_task(result)
    except BaseException:
        mark_phase(root, run_id, "monitor", "failed", time.perf_counter() - t0)
        raise
    mark_phase(root, run_id, "monitor", "completed", time.perf_counter() - t0)
    return result
