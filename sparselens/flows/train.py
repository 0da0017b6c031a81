"""The `train` flow: the four stages of the DSA recipe as subflows, then the train_log table."""

from __future__ import annotations

import time

from prefect import flow
from pydantic import Field

from sparselens.config import PhaseParams, get_preset
from sparselens.storage import RunStore
from sparselens.tasks.train import create_run, mark_phase, train_stage_task, write_train_log
from sparselens.training import STAGE_ORDER


class TrainParams(PhaseParams):
    preset: str | None = Field(None, description="create the run with this preset if it does not exist yet")


@flow(name="train-stage", flow_run_name="{stage}-{run_id}")
def train_stage_flow(root: str, run_id: str, stage: str) -> int:
    """One stage (pretrain, dense_continue, warmup, sparse); resumes from its latest checkpoint."""
    return train_stage_task(root, run_id, stage)


@flow(name="train", flow_run_name="train-{params.run_id}")
def train(params: TrainParams) -> str:
    """Dense pre-training, the equal-step dense baseline, DSA indexer warm-up and sparse stage, for one run."""
    store = RunStore(params.root, params.run_id)
    if not store.exists() and params.preset is not None:
        create_run(params.root, params.run_id, get_preset(params.preset).to_dict())
    store.require_exists()
    t0 = time.perf_counter()
    mark_phase(params.root, params.run_id, "train", "running")
    try:
        for stage in STAGE_ORDER:
            train_stage_flow(params.root, params.run_id, stage)
        write_train_log(params.root, params.run_id)
    except BaseException:
        mark_phase(params.root, params.run_id, "train", "failed", time.perf_counter() - t0)
        raise
    mark_phase(params.root, params.run_id, "train", "completed", time.perf_counter() - t0)
    return params.run_id
