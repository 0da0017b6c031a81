"""The `interpret` flow (Phase 1): summaries, charts and the report section, read only from the capture tables."""

from __future__ import annotations

import time

from prefect import flow
from pydantic import Field

from sparselens.config import PhaseParams
from sparselens.storage import RunStore
from sparselens.tasks.interpret import phase1_charts_task, phase1_report_task, phase1_tables_task
from sparselens.tasks.train import mark_phase


class InterpretParams(PhaseParams):
    """Optional overrides of the run's Phase 1 config (unset: the preset's values)."""

    view_content_types: list[str] | None = Field(None, description="content types drawn as maps and token views")
    full_map_max_len: int | None = Field(None, description="longest length drawn as a full map; longer: pooled")

    def overrides(self) -> dict:
        return {"view_content_types": self.view_content_types, "full_map_max_len": self.full_map_max_len}


@flow(name="interpret", flow_run_name="interpret-{params.run_id}")
def interpret(params: InterpretParams) -> str:
    """Phase 1 for one run; returns the path of the rebuilt report.html."""
    RunStore(params.root, params.run_id).require_exists()
    t0 = time.perf_counter()
    mark_phase(params.root, params.run_id, "interpret", "running")
    try:
        phase1_tables_task(params.root, params.run_id, params.overrides())
        charts = phase1_charts_task(params.root, params.run_id, params.overrides())
        report = phase1_report_task(params.root, params.run_id, charts)
    except BaseException:
        mark_phase(params.root, params.run_id, "interpret", "failed", time.perf_counter() - t0)
        raise
    mark_phase(params.root, params.run_id, "interpret", "completed", time.perf_counter() - t0)
    return report
