"""Thin Prefect tasks of Phase 2 (patterns); each connects to the flow's Dask cluster and calls one library step.

Prefect stays in this process: the Dask workers run plain `sparselens.phase2` functions and never talk to
Prefect. Tasks pass the run's root and id and the scheduler address, never data; each reads the run's `patterns`
section (with the overrides the phase was started with) from the manifest.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sparselens.phase2 import run as phase2
from sparselens.phase2.parallel import connect
from sparselens.runs import phase_config
from sparselens.storage import RunStore
from sparselens.tasks import publish
from sparselens.tasks.progress import StepProgress, step_progress
from sparselens.viz.phase2_report import phase2_summary, write_phase2_report

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


COUNTED = ("write_efficiency", "write_sparsify")  # steps that report their Dask work units as they finish


def _step(name: str, root: str, run_id: str, address: str) -> dict[str, int]:
    store = RunStore(root, run_id)
    label = f"phase 2 {name.removeprefix('write_')}"
    bar = StepProgress(run_id, f"phase2-{name.removeprefix('write_')}", label, None, "units")
    extra = {"progress": lambda done, total: bar.update(done, total=total)} if name in COUNTED else {}
    with connect(address) as client:
        counts = getattr(phase2, name)(store, phase_config(store, "patterns"), client, **extra)
    bar.finish(f"{sum(counts.values())} rows")
    get_run_logger().info("%s wrote %s", name, counts)
    return counts


@task(name="phase2-features", **IO)
def features_task(root: str, run_id: str, address: str) -> dict[str, int]:
    """Head features (dask.dataframe over query_stats and attention_topk) and the ground-truth check."""
    return _step("write_features", root, run_id, address)


@task(name="phase2-content", **IO)
def content_task(root: str, run_id: str, address: str) -> dict[str, int]:
    """Kind distribution and stability per content type, DSA selection relevance."""
    return _step("write_content", root, run_id, address)


@task(name="phase2-clusters", **IO)
def clusters_task(root: str, run_id: str, address: str) -> dict[str, int]:
    """KMeans + HDBSCAN per (model, content_type, seq_len) group and per model."""
    return _step("write_clusters", root, run_id, address)


@task(name="phase2-efficiency", **IO)
def efficiency_task(root: str, run_id: str, address: str) -> dict[str, int]:
    """Recall-density curves, AUC, regret against the oracle and FLOPs per head."""
    return _step("write_efficiency", root, run_id, address)


@task(name="phase2-sparsify", **IO)
def sparsify_task(root: str, run_id: str, address: str) -> dict[str, int]:
    """Replace each head with its fitted pattern, one at a time, and measure the validation loss."""
    return _step("write_sparsify", root, run_id, address)


@task(name="phase2-charts", **IO)
def charts_task(root: str, run_id: str, address: str) -> int:
    """Render every Phase 2 chart (one Dask task each) as offline HTML + PNG."""
    store = RunStore(root, run_id)
    with step_progress(run_id, "phase2-charts", "phase 2 charts"), connect(address) as client:
        return len(phase2.write_charts(store, phase_config(store, "patterns"), client))


@task(name="phase2-report", **IO)
def report_task(root: str, run_id: str) -> str:
    """Write the Phase 2 section and publish the key numbers as artifacts; return the report path."""
    store = RunStore(root, run_id)
    with step_progress(run_id, "phase2-report", "phase 2 report"):
        summary = phase2_summary(store, write_phase2_report(store))
    publish(run_id, "phase2", summary)
    return summary.result
