"""Thin Prefect tasks of Phase 2 (patterns); each connects to the flow's Dask cluster and calls one library step.

Prefect stays in this process: the Dask workers run plain `sparselens.analysis` functions and never talk to
Prefect. Tasks pass the run's root and id, the scheduler address and config overrides, never data.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sparselens.analysis import phase2
from sparselens.analysis.parallel import connect
from sparselens.runs import artifact_key
from sparselens.storage import RunStore
from sparselens.viz.markdown import markdown_table
from sparselens.viz.phase2_report import draw_phase2_charts, phase2_key_numbers, write_phase2_report

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


def _setup(root: str, run_id: str, overrides: dict) -> tuple[RunStore, phase2.Phase2Config]:
    store = RunStore(root, run_id)
    return store, phase2.phase2_config(store.read_manifest()["config"], **overrides)


def _step(name: str, root: str, run_id: str, address: str, overrides: dict) -> dict[str, int]:
    store, cfg = _setup(root, run_id, overrides)
    with connect(address) as client:
        counts = getattr(phase2, name)(store, cfg, client)
    get_run_logger().info("%s wrote %s", name, counts)
    return counts


@task(name="phase2-features", **IO)
def features_task(root: str, run_id: str, address: str, overrides: dict) -> dict[str, int]:
    """Head features (dask.dataframe over query_stats and attention_topk) and the ground-truth check."""
    return _step("write_features", root, run_id, address, overrides)


@task(name="phase2-content", **IO)
def content_task(root: str, run_id: str, address: str, overrides: dict) -> dict[str, int]:
    """Kind distribution and stability per content type, DSA selection relevance."""
    return _step("write_content", root, run_id, address, overrides)


@task(name="phase2-clusters", **IO)
def clusters_task(root: str, run_id: str, address: str, overrides: dict) -> dict[str, int]:
    """KMeans + HDBSCAN per (model, content_type, seq_len) group and per model."""
    return _step("write_clusters", root, run_id, address, overrides)


@task(name="phase2-efficiency", **IO)
def efficiency_task(root: str, run_id: str, address: str, overrides: dict) -> dict[str, int]:
    """Recall-density curves, AUC, regret against the oracle and FLOPs per head."""
    return _step("write_efficiency", root, run_id, address, overrides)


@task(name="phase2-sparsify", **IO)
def sparsify_task(root: str, run_id: str, address: str, overrides: dict) -> dict[str, int]:
    """Replace each head with its fitted pattern, one at a time, and measure the validation loss."""
    return _step("write_sparsify", root, run_id, address, overrides)


@task(name="phase2-charts", **IO)
def charts_task(root: str, run_id: str, address: str, overrides: dict) -> int:
    """Render every Phase 2 chart (one Dask task each) as offline HTML + PNG."""
    store, cfg = _setup(root, run_id, overrides)
    with connect(address) as client:
        return len(draw_phase2_charts(store, phase2.run_facts(store).root, cfg.png_scale, client))


@task(name="phase2-report", **IO)
def report_task(root: str, run_id: str) -> str:
    """Write the Phase 2 report section and publish the key numbers as artifacts; return the report path."""
    store = RunStore(root, run_id)
    path = write_phase2_report(store)
    numbers = phase2_key_numbers(store)
    charts = store.read_table("phase2_charts")
    links = "\n".join(f"- {row.title}: `{store.path(row.html)}`" for row in charts.itertuples(index=False))
    sections = [f"## {name.replace('_', ' ')}\n\n{markdown_table(df)}" for name, df in numbers.items()]
    create_markdown_artifact(
        key=artifact_key(run_id, "phase2"),
        markdown=f"# Phase 2 of run `{run_id}`\n\nReport: `{path}`\n\n"
        + "\n\n".join(sections)
        + f"\n\n## Charts\n\n{links}\n",
        description="pattern kinds, clusters, efficiency against the oracle, sparsify-one-head extremes",
    )
    sparsify = store.read_table("phase2_sparsify")
    table = sparsify[sparsify["content_type"] == "all"].sort_values("delta_loss", ascending=False)
    create_table_artifact(
        key=artifact_key(run_id, "phase2-sparsify"),
        table=table.drop(columns=["run_id"]).round(5).to_dict("records"),
        description="validation-loss change when each head is restricted to its fitted pattern",
    )
    return path
