"""Thin Prefect tasks around Phase 3's library (sparselens.optimize): design, train one model, evaluate, report."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sparselens.optimize import evaluate as ev
from sparselens.optimize import finetune, phase3
from sparselens.runs import phase_preset
from sparselens.storage import RunStore
from sparselens.tasks import publish
from sparselens.tasks.progress import StepProgress, step_progress
from sparselens.viz.phase3_report import phase3_summary

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


def _open(root: str, run_id: str):
    store = RunStore(root, run_id)
    return store, phase_preset(store, "optimize")


@task(name="design-candidates", cache_policy=NO_CACHE)
def design_task(root: str, run_id: str) -> list[str]:
    """Calibrate on the training split and run the designers; returns the candidate names."""
    store, preset = _open(root, run_id)
    with step_progress(run_id, "phase3-design", "phase 3 design"):
        designs = phase3.design(store, preset)
    logger = get_run_logger()
    for d in designs:
        logger.info("%s (%s): %s -- %s", d.name, d.family, d.plan.label(), d.rationale)
    return [d.name for d in designs]


@task(name="train-candidate", task_run_name="train-{name}", cache_policy=NO_CACHE)
def train_candidate_task(root: str, run_id: str, name: str) -> str:
    """Fine-tune one candidate (or the reference); resumes from its checkpoints, so a rerun continues."""
    store, preset = _open(root, run_id)
    logger = get_run_logger()
    steps = {"p3_warmup": preset.optimize.warmup_steps, "p3_finetune": preset.optimize.finetune_steps}
    bars: dict[str, StepProgress] = {}

    def progress(row: dict) -> None:
        stage = row["stage"]
        if stage not in bars:
            bars[stage] = StepProgress(run_id, f"train-{name}-{stage}", f"phase 3 {name} {stage}", steps.get(stage))
        bars[stage].update(row["step"] - preset.train.total_steps + 1, f"lm loss {row['lm_loss']:.4f}")
        logger.info("%s %s step %d loss %.4f lm %.4f (%.0f s)", name, stage, row["step"], row["loss"],
                    row["lm_loss"], row["wall_s"])  # fmt: skip

    finetune.train_named(store, preset, name, progress)
    for bar in bars.values():
        bar.finish()
    return name


@task(name="evaluate-candidates", cache_policy=NO_CACHE)
def evaluate_task(root: str, run_id: str) -> int:
    """Measure every model side by side; returns the number of models in phase3_candidates."""
    store, preset = _open(root, run_id)
    with step_progress(run_id, "phase3-evaluate", "phase 3 evaluate"):
        return len(ev.evaluate(store, preset)["phase3_candidates"])


@task(name="phase3-report", **IO)
def report_task(root: str, run_id: str) -> str:
    """Charts, the report section, report.html; publishes the summary and the candidates table."""
    store, preset = _open(root, run_id)
    summary = phase3_summary(store, preset)
    publish(run_id, "phase3", summary)
    return summary.result
