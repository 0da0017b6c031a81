"""The `benchmark` flow (Phase 4): every model side by side in phase4_benchmark, the champion, charts, report."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from prefect import flow
from pydantic import Field

from sparselens.config import PhaseParams
from sparselens.storage import RunStore
from sparselens.tasks.benchmark import benchmark_report_task, benchmark_task, champion_task
from sparselens.tasks.train import mark_phase

Backend = Literal["reference", "cpu", "triton"]


class BenchmarkParams(PhaseParams):
    """Phase 4 parameters; empty fields keep the run's benchmark config."""

    PHASE: ClassVar[str] = "benchmark"

    models: list[str] | None = Field(None, description="models to compare; empty: dense, dsa and every candidate")
    kernel_backend: Backend | None = Field(None, description="run every model on these kernels (default: fastest)")


@flow(name="benchmark", flow_run_name="benchmark-{params.run_id}")
def benchmark(params: BenchmarkParams) -> dict:
    """Phase 4 for one run; returns the champion decision."""
    RunStore(params.root, params.run_id).require_exists()
    root, run_id, overrides = params.root, params.run_id, params.overrides()
    t0 = time.perf_counter()
    mark_phase(root, run_id, "benchmark", "running")
    try:
        benchmark_task(root, run_id, overrides, params.kernel_backend)
        decision = champion_task(root, run_id)
        benchmark_report_task(root, run_id, overrides)
    except BaseException:
        mark_phase(root, run_id, "benchmark", "failed", time.perf_counter() - t0)
        raise
    mark_phase(root, run_id, "benchmark", "completed", time.perf_counter() - t0)
    return decision
