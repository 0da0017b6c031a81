"""The `patterns` flow (Phase 2) on Dask: features, content map, clusters, efficiency, sparsify, charts, report.

The flow starts a LocalCluster (`n_workers` single-threaded worker processes) unless `dask_address` names a
running scheduler, and hands the address to every task. Efficiency and sparsify need only the models, so they
run beside the feature chain on the same cluster. Workers run plain library functions; when the flow has a
Prefect API URL, LocalCluster workers inherit it, so nothing on them starts a second (ephemeral) Prefect server.
"""

from __future__ import annotations

import time

from prefect import flow
from pydantic import Field

from sparselens.analysis.parallel import cluster_address
from sparselens.analysis.phase2 import phase2_config
from sparselens.config import PhaseParams
from sparselens.storage import RunStore
from sparselens.tasks.patterns import (
    charts_task,
    clusters_task,
    content_task,
    efficiency_task,
    features_task,
    report_task,
    sparsify_task,
)
from sparselens.tasks.train import mark_phase


class PatternsParams(PhaseParams):
    """Phase 2 parameters; empty fields keep the run's Phase 2 config (its preset's defaults)."""

    dask_address: str | None = Field(
        None, description="tcp://host:port of a running Dask scheduler; empty: start a LocalCluster for this flow run"
    )
    n_workers: int | None = Field(None, ge=1, description="LocalCluster workers (one core each); default 2")
    budget: float | None = Field(None, gt=0, le=1, description="classify budget, a fraction of the keys")
    efficiency_seq_lens: list[int] | None = Field(None, description="lengths of the recall-density curves")
    sparsify_samples: int | None = Field(
        None, ge=1, description="validation samples per content type for sparsify-one-head"
    )

    def overrides(self) -> dict:
        names = ("n_workers", "budget", "efficiency_seq_lens", "sparsify_samples")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@flow(name="patterns", flow_run_name="patterns-{params.run_id}")
def patterns(params: PatternsParams) -> dict:
    """Phase 2 for one run: every phase2_* table, the charts and the report section; returns row counts."""
    store = RunStore(params.root, params.run_id)
    store.require_exists()
    overrides = params.overrides()
    cfg = phase2_config(store.read_manifest()["config"], **overrides)
    root, run_id = params.root, params.run_id
    t0 = time.perf_counter()
    mark_phase(root, run_id, "patterns", "running")
    try:
        with cluster_address(params.dask_address, cfg.n_workers) as address:
            args = (root, run_id, address, overrides)
            side = [efficiency_task.submit(*args), sparsify_task.submit(*args)]
            counts = features_task(*args)
            counts |= content_task(*args)
            counts |= clusters_task(*args)
            for future in side:
                counts |= future.result()
            counts["phase2_charts"] = charts_task(*args)
        report_task(root, run_id)
    except BaseException:
        mark_phase(root, run_id, "patterns", "failed", time.perf_counter() - t0)
        raise
    mark_phase(root, run_id, "patterns", "completed", time.perf_counter() - t0)
    return counts
