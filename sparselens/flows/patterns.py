"""The `patterns` flow (Phase 2) on Dask: features, content map, clusters, efficiency, sparsify, charts, report.

The flow starts a LocalCluster (the section's `n_workers` single-threaded worker processes) unless `dask_address`
names a running scheduler, and hands the address to every task. Efficiency and sparsify need only the models, so
they run beside the feature chain on the same cluster. Workers run plain library functions; when the flow has a
Prefect API URL, LocalCluster workers inherit it, so nothing on them starts a second (ephemeral) Prefect server.
"""

from __future__ import annotations

from prefect import flow

from sparselens.config import PatternsParams
from sparselens.phase2.parallel import cluster_address
from sparselens.runs import phase
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


@flow(name="patterns", flow_run_name="patterns-{params.run_id}")
def patterns(params: PatternsParams) -> dict:
    """Phase 2 for one run: every phase2_* table, the charts and the report section; returns row counts."""
    root, run_id = params.root, params.run_id
    with phase(RunStore(root, run_id), "patterns", params.overrides()) as cfg:
        with cluster_address(params.dask_address, cfg.n_workers) as address:
            side = [efficiency_task.submit(root, run_id, address), sparsify_task.submit(root, run_id, address)]
            counts = features_task(root, run_id, address)
            counts |= content_task(root, run_id, address)
            counts |= clusters_task(root, run_id, address)
            for future in side:
                counts |= future.result()
            counts["phase2_charts"] = charts_task(root, run_id, address)
        report_task(root, run_id)
    return counts
