"""The `benchmark` flow (Phase 4): every model side by side in phase4_benchmark, the champion, charts, report."""

from __future__ import annotations

from prefect import flow

from sparselens.config import BenchmarkParams
from sparselens.runs import phase
from sparselens.storage import RunStore
from sparselens.tasks.benchmark import benchmark_report_task, benchmark_task, champion_task


@flow(name="benchmark", flow_run_name="benchmark-{params.run_id}")
def benchmark(params: BenchmarkParams) -> dict:
    """Phase 4 for one run; returns the champion decision."""
    args = (params.root, params.run_id)
    with phase(RunStore(*args), "benchmark", params.overrides()):
        benchmark_task(*args)
        decision = champion_task(*args)
        benchmark_report_task(*args)
    return decision
