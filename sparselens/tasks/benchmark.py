"""Thin Prefect tasks of Phase 4's benchmark: measure, choose the champion, draw and publish."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sparselens.benchmark.champion import write_champion
from sparselens.benchmark.report import markdown_summary, read_champion, summary_table, write_phase4_report
from sparselens.benchmark.run import run_benchmark
from sparselens.benchmark.table import TABLE
from sparselens.runs import artifact_key, phase_preset
from sparselens.storage import RunStore

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


@task(name="phase4-benchmark", cache_policy=NO_CACHE)
def benchmark_task(root: str, run_id: str) -> int:
    """Measure every model of the run into phase4_benchmark (no retries: a rerun measures everything again)."""
    store = RunStore(root, run_id)
    preset = phase_preset(store, "benchmark")
    table = run_benchmark(store, preset, preset.benchmark.kernel_backend, get_run_logger().info)
    return len(table)


@task(name="phase4-champion", **IO)
def champion_task(root: str, run_id: str) -> dict:
    """Apply the champion rule to the table and write champion.json; return the decision."""
    store = RunStore(root, run_id)
    decision = write_champion(store, store.read_table(TABLE))
    get_run_logger().info("champion: %s (%s)", decision.champion, decision.reason)
    return decision.to_dict()


@task(name="phase4-report", **IO)
def benchmark_report_task(root: str, run_id: str) -> str:
    """Charts, the report section and the markdown + table artifacts; returns the report path."""
    store = RunStore(root, run_id)
    report = write_phase4_report(store, phase_preset(store, "benchmark").benchmark.png_scale)
    create_markdown_artifact(
        key=artifact_key(run_id, "phase4"),
        markdown=markdown_summary(store) + f"\nReport: `{report}`\n",
        description="Phase 4: every model side by side, the champion and the speed-ups against dense",
    )
    table = summary_table(store.read_table(TABLE), read_champion(store)).round(4)
    create_table_artifact(
        key=artifact_key(run_id, "phase4-summary"),
        table=table.astype(object).where(table.notna(), None).to_dict("records"),
        description="one row per model: loss against DSA, retrieval, prefill/decode ms, cache bytes, peak RSS",
    )
    return report
