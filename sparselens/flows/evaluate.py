"""The `evaluate` flow: held-out loss per content type and length, and indexer recall, for dense and DSA."""

from __future__ import annotations

from prefect import flow

from sparselens.config import PhaseParams
from sparselens.runs import phase
from sparselens.storage import RunStore
from sparselens.tasks.train import evaluate_task


@flow(name="evaluate", flow_run_name="evaluate-{params.run_id}")
def evaluate(params: PhaseParams) -> dict:
    with phase(RunStore(params.root, params.run_id), "evaluate", params.overrides()):
        return evaluate_task(params.root, params.run_id)
