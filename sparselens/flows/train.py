"""The `train` flow: the four stages of the DSA recipe as subflows, then the train_log table."""

from __future__ import annotations

from prefect import flow

from sparselens.config import TrainParams
from sparselens.runs import phase
from sparselens.storage import RunStore
from sparselens.tasks.train import open_run_task, train_stage_task, write_train_log_task
from sparselens.training import STAGE_ORDER


@flow(name="train-stage", flow_run_name="{stage}-{run_id}")
def train_stage_flow(root: str, run_id: str, stage: str) -> int:
    """One stage (pretrain, dense_continue, warmup, sparse); resumes from its latest checkpoint."""
    return train_stage_task(root, run_id, stage)


@flow(name="train", flow_run_name="train-{params.run_id}")
def train(params: TrainParams) -> str:
    """Dense pre-training, the equal-step dense baseline, DSA indexer warm-up and sparse stage, for one run."""
    if params.preset is not None:
        open_run_task(params.root, params.run_id, params.preset)
    with phase(RunStore(params.root, params.run_id), "train", params.overrides()):
        for stage in STAGE_ORDER:
            train_stage_flow(params.root, params.run_id, stage)
        write_train_log_task(params.root, params.run_id)
    return params.run_id
