"""Thin Prefect tasks around `sparselens.interpret` (Phase 1): tables, charts, report section and artifacts."""

from __future__ import annotations

import posixpath

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sparselens.interpret import (
    draw_phase1_charts,
    interpret_config,
    key_numbers,
    write_phase1_report,
    write_phase1_tables,
)
from sparselens.runs import artifact_key
from sparselens.storage import RunStore
from sparselens.viz.markdown import markdown_table

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


def _config(root: str, run_id: str, overrides: dict):
    store = RunStore(root, run_id)
    return store, interpret_config(store.read_manifest()["config"], **overrides)


@task(name="phase1-tables", **IO)
def phase1_tables_task(root: str, run_id: str, overrides: dict) -> dict[str, int]:
    """Write the phase1_* summary tables from the capture tables; return their row counts."""
    store, cfg = _config(root, run_id, overrides)
    counts = write_phase1_tables(store, cfg)
    get_run_logger().info("phase 1 tables: %s", counts)
    return counts


@task(name="phase1-charts", **IO)
def phase1_charts_task(root: str, run_id: str, overrides: dict) -> list[dict]:
    """Draw and save every Phase 1 chart (HTML + PNG); return name, title and paths of each."""
    store, cfg = _config(root, run_id, overrides)
    return [{"name": c.name, "title": c.title, "png": c.png, "html": c.html} for c in draw_phase1_charts(store, cfg)]


@task(name="phase1-report", **IO)
def phase1_report_task(root: str, run_id: str, charts: list[dict]) -> str:
    """Rebuild report.html with the Phase 1 section; publish the key numbers, tables and chart links."""
    store = RunStore(root, run_id)
    report = write_phase1_report(store)
    numbers = key_numbers(store)
    recall = store.read_table("phase1_recall_length")
    pooled = recall[recall["content_type"] == "all"][["layer", "first_below", "crossing_len", "status"]]
    links = "\n".join(f"- [{c['title']}]({_url(store, c['html'])}) ([png]({_url(store, c['png'])}))" for c in charts)
    create_markdown_artifact(
        key=artifact_key(run_id, "phase1"),
        markdown=(
            f"# Phase 1 of run `{run_id}`\n\n## Key numbers per layer\n\n{markdown_table(numbers, 3)}\n\n"
            f"## Where indexer recall falls below the threshold\n\n{markdown_table(pooled, 1)}\n\n"
            f"## Charts\n\n{links}\n\nReport: [{posixpath.basename(report)}]({_url(store, 'report.html')})\n"
        ),
        description="Phase 1 key numbers and chart links",
    )
    create_table_artifact(
        key=artifact_key(run_id, "phase1-key-numbers"),
        table=numbers.round(4).astype(object).where(numbers.notna(), None).to_dict("records"),
    )
    scaling = store.read_table("phase1_scaling")
    pooled_scaling = scaling[scaling["content_type"] == "all"].drop(columns=["run_id"]).round(4)
    create_table_artifact(
        key=artifact_key(run_id, "phase1-scaling"),
        table=pooled_scaling.astype(object).where(pooled_scaling.notna(), None).to_dict("records"),
    )
    create_link_artifact(
        _url(store, "report.html"), link_text=f"report.html of run {run_id}", key=artifact_key(run_id, "report")
    )
    return report


def _url(store: RunStore, relpath: str) -> str:
    """A URL of a file under the run directory (file:// on local disk)."""
    return f"{store.url.rstrip('/')}/{relpath}"
