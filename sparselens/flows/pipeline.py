"""The parent flow: create a run, train, evaluate, capture, interpret, patterns (later phases plug in as subflows)."""

from __future__ import annotations

from prefect import flow

from sparselens.config import PhaseParams, RunParams, get_preset
from sparselens.flows.capture import CaptureParams, capture
from sparselens.flows.evaluate import evaluate
from sparselens.flows.interpret import InterpretParams, interpret
from sparselens.flows.patterns import PatternsParams, patterns
from sparselens.flows.train import TrainParams, train
from sparselens.runs import new_run_id
from sparselens.tasks.train import create_run


@flow(name="pipeline", flow_run_name="pipeline-{params.preset}")
def pipeline(params: RunParams) -> str:
    """The whole study for one preset; returns the run id (outputs under root/runs/<run_id>/)."""
    preset = get_preset(params.preset).with_overrides(topk=params.topk)
    run_id = params.run_id or new_run_id(preset)
    create_run(params.root, run_id, preset.to_dict())
    train(TrainParams(run_id=run_id, root=params.root))
    evaluate(PhaseParams(run_id=run_id, root=params.root))
    capture(CaptureParams(run_id=run_id, root=params.root))
    interpret(InterpretParams(run_id=run_id, root=params.root))
    patterns(PatternsParams(run_id=run_id, root=params.root))
    return run_id
