"""The `interpret` flow (Phase 1): summaries, charts and the report section, read only from the capture tables."""

from __future__ import annotations

from prefect import flow

from sparselens.config import InterpretParams
from sparselens.runs import phase
from sparselens.storage import RunStore
from sparselens.tasks.interpret import phase1_charts_task, phase1_report_task, phase1_tables_task


@flow(name="interpret", flow_run_name="interpret-{params.run_id}")
def interpret(params: InterpretParams) -> str:
    """Phase 1 for one run; returns the path of the rebuilt report.html."""
    with phase(RunStore(params.root, params.run_id), "interpret", params.overrides()):
        phase1_tables_task(params.root, params.run_id)
        charts = phase1_charts_task(params.root, params.run_id)
        return phase1_report_task(params.root, params.run_id, charts)
