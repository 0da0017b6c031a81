"""Thin Prefect tasks around the training and evaluation library; they pass run ids and paths, never tensors."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sparselens.evaluation import evaluate_run, evaluation_summary
from sparselens.runs import open_run, phase_preset
from sparselens.storage import RunStore
from sparselens.tasks import publish
from sparselens.training import train_stage, write_train_log

IO = dict(retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)


@task(name="open-run", **IO)
def open_run_task(
    root: str, run_id: str, preset: str | None, topk: int | None = None, overrides: dict[str, Any] | None = None
) -> str:
    """Create the run with the requested config, or check that the existing run was created with it."""
    return open_run(RunStore(root, run_id), preset, topk, overrides).name


@task(name="train-stage", task_run_name="train-{stage}", cache_policy=NO_CACHE)
def train_stage_task(root: str, run_id: str, stage: str) -> int:
    """Run or resume one stage (no retries: a diverged stage would diverge again; rerun resumes anyway)."""
    store = RunStore(root, run_id)
    logger = get_run_logger()

    def progress(row: dict) -> None:
        logger.info(
            "%s step %d loss %.4f lm %.4f lr %.2e (%.0f s)",
            row["stage"],
            row["step"],
            row["loss"],
            row["lm_loss"],
            row["lr"],
            row["wall_s"],
        )

    return len(train_stage(store, phase_preset(store, "train"), stage, progress))


@task(name="write-train-log", **IO)
def write_train_log_task(root: str, run_id: str) -> int:
    store = RunStore(root, run_id)
    summary = write_train_log(store, phase_preset(store, "train"))
    publish(run_id, "train", summary)
    return summary.result


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_task(root: str, run_id: str) -> dict:
    """Evaluate dense and DSA; publish the loss ratio per content type and recall against the oracle."""
    store = RunStore(root, run_id)
    preset = phase_preset(store, "evaluate")
    summary = evaluation_summary(run_id, preset, evaluate_run(store, preset))
    publish(run_id, "evaluate", summary)
    return summary.result
