"""Thin Prefect tasks of the monitor: one measured check of the champion, then its artifacts and events."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from sparselens.benchmark.monitor import run_monitor
from sparselens.benchmark.verdict import RULE
from sparselens.runs import artifact_key, phase_preset
from sparselens.storage import RunStore
from sparselens.viz.markdown import markdown_table

CHECKED, REGRESSED = "sparselens.champion.checked", "sparselens.champion.regressed"


@task(name="monitor-check", cache_policy=NO_CACHE)
def monitor_task(root: str, run_id: str) -> dict:
    """Time the champion against dense and decide (no retries: every attempt appends its own samples)."""
    store = RunStore(root, run_id)
    preset = phase_preset(store, "monitor")
    result = run_monitor(store, preset, preset.monitor.kernel_backend, get_run_logger().info)
    get_run_logger().info("monitor %s: %s", result.monitor_run, result.verdict)
    return {
        "run_id": run_id,
        "root": root,
        "monitor_run": result.monitor_run,
        "champion": result.champion,
        "verdict": result.verdict,
        "regressed": result.regressed,
        "host": result.host,
        "verdicts": result.table().to_dict("records"),
    }


@task(name="monitor-publish", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_monitor_task(result: dict) -> None:
    """Markdown and table artifacts; `sparselens.champion.checked` always, `.regressed` on a regression."""
    import pandas as pd

    run_id, table = result["run_id"], pd.DataFrame(result["verdicts"])
    host = result["host"]
    create_markdown_artifact(
        key=artifact_key(run_id, "monitor"),
        markdown=(
            f"# Monitor of run `{run_id}`: **{result['verdict']}**\n\nChampion `{result['champion']}` against "
            f"`dense`, monitor run `{result['monitor_run']}` on {host['cpu_model']} ({host['cores']} cores, "
            f"{host['threads']} threads, torch {host['torch_version']}).\n\n{markdown_table(table, 5)}\n\n"
            f"Rule:\n\n{RULE}\n"
        ),
        description="champion against dense: verdict per metric",
    )
    create_table_artifact(
        key=artifact_key(run_id, "monitor-verdicts"),
        table=table.astype(object).where(table.notna(), None).to_dict("records"),
    )
    resource = {"prefect.resource.id": f"sparselens.run.{run_id}", "prefect.resource.name": run_id}
    payload = {k: result[k] for k in ("run_id", "root", "monitor_run", "champion", "verdict")}
    emit_event(event=CHECKED, resource=resource, payload=payload)
    if result["regressed"]:
        emit_event(event=REGRESSED, resource=resource, payload=payload)
