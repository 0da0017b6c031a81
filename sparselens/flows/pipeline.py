"""The parent flow: create a run, then every phase of PIPELINE_PHASES as a subflow (train ... optimize, benchmark)."""

from __future__ import annotations

from prefect import flow

from sparselens.config import PIPELINE_PHASES, RunParams
from sparselens.flows import phase_flow
from sparselens.runs import new_run_id, requested_preset
from sparselens.tasks.train import open_run_task


@flow(name="pipeline", flow_run_name="pipeline-{params.preset}")
def pipeline(params: RunParams) -> str:
    """The whole study for one preset; returns the run id (outputs under root/runs/<run_id>/).

    An existing run id resumes that run, which must have been created with the preset, k and overrides asked for.
    """
    run_id = params.run_id or new_run_id(requested_preset(params.preset, params.topk, params.overrides))
    open_run_task(params.root, run_id, params.preset, params.topk, params.overrides)
    for name in PIPELINE_PHASES:
        flow, params_cls = phase_flow(name)
        flow(params_cls(run_id=run_id, root=params.root))
    return run_id
