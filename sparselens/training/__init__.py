"""Training library (no Prefect): the stages of the DSA recipe, the loop, schedules."""

from sparselens.training.loop import TrainingDivergedError, run_stage
from sparselens.training.recipe import StageNotDoneError, train_all, train_log, train_stage, write_train_log
from sparselens.training.stages import STAGE_ORDER, stage_specs

__all__ = [
    "STAGE_ORDER",
    "StageNotDoneError",
    "TrainingDivergedError",
    "run_stage",
    "stage_specs",
    "train_all",
    "train_log",
    "train_stage",
    "write_train_log",
]
