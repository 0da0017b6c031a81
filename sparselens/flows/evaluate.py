"""The `evaluate` flow: held-out loss per content type and length, and indexer recall, for dense and DSA."""

from __future__ import annotations

import time

from prefect import flow

from sparselens.config import PhaseParams
from sparselens.storage import RunStore
from sparselens.tasks.train import evaluate_task, mark_phase


@flow(name="evaluate", flow_run_name="evaluate-{params.run_id}")
def evaluate(params: PhaseParams) -> dict:
    RunStore(params.root, params.run_id).require_exists()
    t0 = time.perf_counter()
    mark_phase(params.root, params.run_id, "evaluate", "running")
    try:
        result = evaluate_task(params.root, params.run_id)
    except BaseException:
        mark_phase(params.root, params.run_id, "evaluate", "failed", time.perf_counter() - t0)
        raise
    mark_phase(params.root, params.run_id, "evaluate", "completed", time.perf_counter() - t0)
    return result
