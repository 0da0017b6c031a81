"""The DSA training recipe end to end: dense pre-training, equal-step dense baseline, indexer warm-up, sparse stage.

Each stage is callable alone (the Prefect train flow runs them as subflows); a stage reads its starting weights from
the final checkpoint of the stage before it, so a rerun picks up exactly where a killed run stopped.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from sparselens.config import Preset
from sparselens.models.gpt import GPT, build_model
from sparselens.threads import torch_threads
from sparselens.training.loop import Progress, run_stage
from sparselens.training.stages import STAGE_ORDER, StageSpec, stage_specs
from sparselens.viz.markdown import Summary, markdown_table

PREVIOUS = {"pretrain": None, "dense_continue": "pretrain", "warmup": "pretrain", "sparse": "warmup"}
FINAL_MODEL = {"dense_continue": "dense", "sparse": "dsa"}


class StageNotDoneError(RuntimeError):
    """A stage's input (the previous stage's final checkpoint) is missing."""


def fresh_model(preset: Preset, attention: str) -> GPT:
    """A deterministically initialised model; the DSA one differs only by its extra indexers."""
    torch.manual_seed(preset.train.seed + (attention == "dsa"))
    return build_model(dataclasses.replace(preset.model, attention=attention))


def stage_output(store, preset: Preset, stage: str) -> dict:
    """The model state_dict a finished `stage` produced (a zero-step stage passes its input through)."""
    spec = stage_specs(preset.train)[stage]
    if spec.steps == 0:
        prev = PREVIOUS[stage]
        return fresh_model(preset, "dense").state_dict() if prev is None else stage_output(store, preset, prev)
    found = store.latest_checkpoint(spec.model_name, stage)
    if found is None or found[0] != spec.steps:
        at = "no checkpoint" if found is None else f"step {found[0]} of {spec.steps}"
        raise StageNotDoneError(
            f"training stage {stage!r} has not finished ({at}); run `sparselens phase train --run-id {store.run_id}`"
        )
    return found[1]["model"]


def model_for_stage(store, preset: Preset, stage: str) -> GPT:
    """The model a stage starts from: fresh for pre-training, else the previous stage's output."""
    spec = stage_specs(preset.train)[stage]
    model = fresh_model(preset, "dsa" if spec.model_name == "dsa" else "dense")
    prev = PREVIOUS[stage]
    if prev is not None:
        missing, unexpected = model.load_state_dict(stage_output(store, preset, prev), strict=False)
        if unexpected or any(".indexer." not in n for n in missing):
            raise RuntimeError(f"stage {stage!r}: weights of {prev!r} do not fit ({missing=}, {unexpected=})")
    return model


def train_stage(store, preset: Preset, stage: str, progress: Progress | None = None) -> list[dict]:
    """Run (or resume, or skip if finished) one stage; the last stages also save the final models.

    `preset.train.threads` (if set) holds only inside the stage: the caller's thread count is restored on exit.
    """
    spec: StageSpec = stage_specs(preset.train)[stage]
    with torch_threads(preset.train.threads or None):
        model = model_for_stage(store, preset, stage)
        rows = run_stage(store, spec, model, preset, store.run_id, progress)
        if stage in FINAL_MODEL:
            store.save_model(FINAL_MODEL[stage], model)
    return rows


def train_log(store, preset: Preset) -> pd.DataFrame:
    """All stages' logged rows, from their latest checkpoints (the single source of truth), as a DataFrame."""
    rows = []
    for stage in STAGE_ORDER:
        spec = stage_specs(preset.train)[stage]
        found = store.latest_checkpoint(spec.model_name, stage) if spec.steps else None
        if found is not None:
            rows.extend(found[1]["log"])
    return pd.DataFrame(rows)


def write_train_log(store, preset: Preset) -> Summary:
    """Write the train_log table; return its summary (the last logged row of each stage) and its row count."""
    log = train_log(store, preset)
    store.write_table("train_log", log)
    final = log.groupby(["model", "stage"]).tail(1)[["model", "stage", "step", "loss", "lm_loss", "kl_loss"]]
    return Summary(
        markdown=f"# Training of run `{store.run_id}`\n\nLast logged row of each stage:\n\n{markdown_table(final)}",
        description="final losses per training stage",
        result=len(log),
    )


def train_all(store, preset: Preset, progress: Progress | None = None) -> pd.DataFrame:
    """Every stage in order, then the train_log table; returns it."""
    for stage in STAGE_ORDER:
        train_stage(store, preset, stage, progress)
    write_train_log(store, preset)
    return train_log(store, preset)
