"""Thin Prefect tasks around the training and evaluation library; they pass run ids and paths, never tensors."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sparselens.evaluation import evaluate_run, summary
from sparselens.runs import artifact_key, run_preset
from sparselens.storage import RunStore
from sparselens.training import train_log, train_stage
from sparselens.viz.markdown import markdown_table

IO = dict(retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)


@task(name="create-run", **IO)
def create_run(root: str, run_id: str, config: dict) -> str:
    store = RunStore(root, run_id)
    if not store.exists():
        store.create(config)
    return run_id


@task(name="mark-phase", **IO)
def mark_phase(root: str, run_id: str, phase: str, status: str, seconds: float | None = None) -> None:
    RunStore(root, run_id).update_phase(phase, status, seconds)


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

    return len(train_stage(store, run_preset(store), stage, progress))


@task(name="write-train-log", **IO)
def write_train_log(root: str, run_id: str) -> int:
    store = RunStore(root, run_id)
    log = train_log(store, run_preset(store))
    store.write_table("train_log", log)
    final = log.groupby(["model", "stage"]).tail(1)[["model", "stage", "step", "loss", "lm_loss", "kl_loss"]]
    create_markdown_artifact(
        key=artifact_key(run_id, "train"),
        markdown=f"# Training of run `{run_id}`\n\nLast logged row of each stage:\n\n{markdown_table(final)}",
        description="final losses per training stage",
    )
    return len(log)


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_task(root: str, run_id: str) -> dict:
    """Evaluate dense and DSA; publish a summary (loss ratio per content type, recall vs oracle) as artifacts."""
    store = RunStore(root, run_id)
    preset = run_preset(store)
    t0 = time.perf_counter()
    tables = evaluate_run(store, preset)
    table = summary(tables["eval_loss"], tables["indexer_recall"], preset.train.seq_len).reset_index()
    per_layer = tables["indexer_recall"].groupby(["seq_len", "layer"])[["recall", "oracle_recall"]].mean()
    create_markdown_artifact(
        key=artifact_key(run_id, "evaluate"),
        markdown=(
            f"# Evaluation of run `{run_id}`\n\nAt the training length T = {preset.train.seq_len}, "
            f"k = {preset.model.topk}:\n\n{markdown_table(table)}\n\n"
            f"Indexer recall per length and layer (mean over content types):\n\n"
            f"{markdown_table(per_layer.reset_index())}\n"
        ),
        description="DSA vs equal-step dense loss and indexer recall",
    )
    create_table_artifact(key=artifact_key(run_id, "eval-summary"), table=table.round(5).to_dict("records"))
    return {"seconds": time.perf_counter() - t0, "ratio_max": float(table["ratio"].max())}
