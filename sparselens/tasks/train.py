"""Thin Prefect tasks around the training and evaluation library; they pass run ids and paths, never tensors."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sparselens.evaluation import evaluate_run, evaluation_units
from sparselens.runs import open_run, phase_preset
from sparselens.storage import RunStore
from sparselens.tasks import publish
from sparselens.tasks.progress import StepProgress
from sparselens.training import train_stage, write_train_log
from sparselens.training.stages import stage_specs
from sparselens.viz.eval_report import evaluation_summary, write_run_sections

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
    preset = phase_preset(store, "train")
    spec = stage_specs(preset.train)[stage]
    logger = get_run_logger()
    bar = StepProgress(run_id, f"train-{stage}", f"train {spec.model_name} {stage}", spec.steps)

    def progress(row: dict) -> None:
        kl = "" if row["kl_loss"] is None or row["lm_loss"] == row["loss"] else f" kl {row['kl_loss']:.4f}"
        bar.update(row["step"] - spec.first_step + 1, f"lm loss {row['lm_loss']:.4f}{kl}")
        logger.info("%s step %d loss %.4f lm %.4f lr %.2e (%.0f s)", stage, row["step"], row["loss"],
                    row["lm_loss"], row["lr"], row["wall_s"])  # fmt: skip

    rows = train_stage(store, preset, stage, progress)
    bar.finish(f"lm loss {rows[-1]['lm_loss']:.4f}" if rows else "")
    return len(rows)


@task(name="write-train-log", **IO)
def write_train_log_task(root: str, run_id: str) -> int:
    store = RunStore(root, run_id)
    summary = write_train_log(store, phase_preset(store, "train"))
    publish(run_id, "train", summary)
    return summary.result


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_task(root: str, run_id: str) -> dict:
    """Evaluate dense and DSA; write the training and evaluation report sections; publish the loss ratios with
    their intervals, task accuracy and recall against the oracle."""
    store = RunStore(root, run_id)
    preset = phase_preset(store, "evaluate")
    bar = StepProgress(run_id, "evaluate", "evaluate dense + dsa", evaluation_units(preset), "units")
    evaluate_run(store, preset, lambda done, _total: bar.update(done))
    bar.finish()
    t, k = preset.train.seq_len, preset.model.topk
    summary = evaluation_summary(store, t, k, write_run_sections(store, t, k))
    publish(run_id, "evaluate", summary)
    return summary.result
