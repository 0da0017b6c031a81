"""Thin Prefect tasks around `sparselens.interpret` (Phase 1): tables, charts, report section and artifacts."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sparselens.interpret import draw_phase1_charts, phase1_summary, write_phase1_report, write_phase1_tables
from sparselens.runs import phase_config
from sparselens.storage import RunStore
from sparselens.tasks import publish
from sparselens.tasks.progress import step_progress

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


@task(name="phase1-tables", **IO)
def phase1_tables_task(root: str, run_id: str) -> dict[str, int]:
    """Write the phase1_* summary tables from the capture tables; return their row counts."""
    store = RunStore(root, run_id)
    with step_progress(run_id, "phase1-tables", "phase 1 tables"):
        counts = write_phase1_tables(store, phase_config(store, "interpret"))
    get_run_logger().info("phase 1 tables: %s", counts)
    return counts


@task(name="phase1-charts", **IO)
def phase1_charts_task(root: str, run_id: str) -> list[dict]:
    """Draw and save every Phase 1 chart (HTML + PNG); return name, title and paths of each."""
    store = RunStore(root, run_id)
    with step_progress(run_id, "phase1-charts", "phase 1 charts"):
        charts = draw_phase1_charts(store, phase_config(store, "interpret"))
    return [{"name": c.name, "title": c.title, "png": c.png, "html": c.html} for c in charts]


@task(name="phase1-report", **IO)
def phase1_report_task(root: str, run_id: str, charts: list[dict]) -> str:
    """Rebuild report.html with the Phase 1 section; publish the key numbers, tables and chart links."""
    store = RunStore(root, run_id)
    summary = phase1_summary(store, charts, write_phase1_report(store))
    publish(run_id, "phase1", summary)
    return summary.result
