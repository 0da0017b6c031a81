"""The `optimize` flow (Phase 3): design cheaper attention from the measurements, train it fairly, measure it."""

from __future__ import annotations

from prefect import flow

from sparselens.config import OptimizeParams
from sparselens.optimize.finetune import REFERENCE
from sparselens.runs import phase
from sparselens.storage import RunStore
from sparselens.tasks.optimize import design_task, evaluate_task, report_task, train_candidate_task


@flow(name="optimize", flow_run_name="optimize-{params.run_id}")
def optimize(params: OptimizeParams) -> str:
    """Phase 3 for one run that has trained (and ideally run Phase 2); returns the path of report.html."""
    args = (params.root, params.run_id)
    with phase(RunStore(*args), "optimize", params.overrides()):
        names = design_task(*args)
        for name in [REFERENCE, *names]:
            train_candidate_task(*args, name)
        evaluate_task(*args)
        return report_task(*args)
