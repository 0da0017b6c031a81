"""Thin Prefect tasks around Phase 3's library (sparselens.optimize): design, train one model, evaluate, report."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sparselens.optimize import evaluate as ev
from sparselens.optimize import finetune, phase3
from sparselens.runs import artifact_key, phase_preset
from sparselens.storage import RunStore
from sparselens.viz.phase3_report import write_phase3_report

IO = dict(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)


def _open(root: str, run_id: str, overrides: dict):
    store = RunStore(root, run_id)
    return store, phase_preset(store, "optimize", overrides)


@task(name="design-candidates", cache_policy=NO_CACHE)
def design_task(root: str, run_id: str, overrides: dict) -> list[str]:
    """Calibrate on the training split and run the designers; returns the candidate names."""
    store, preset = _open(root, run_id, overrides)
    designs = phase3.design(store, preset)
    logger = get_run_logger()
    for d in designs:
        logger.info("%s (%s): %s -- %s", d.name, d.family, d.plan.label(), d.rationale)
    return [d.name for d in designs]


@task(name="train-candidate", task_run_name="train-{name}", cache_policy=NO_CACHE)
def train_candidate_task(root: str, run_id: str, name: str, overrides: dict) -> str:
    """Fine-tune one candidate (or the reference); resumes from its checkpoints, so a rerun continues."""
    store, preset = _open(root, run_id, overrides)
    logger = get_run_logger()

    def progress(row: dict) -> None:
        logger.info("%s %s step %d loss %.4f lm %.4f (%.0f s)", name, row["stage"], row["step"], row["loss"],
                    row["lm_loss"], row["wall_s"])  # fmt: skip

    if name == finetune.REFERENCE:
        finetune.train_reference(store, preset, progress)
    else:
        design = next(d for d in phase3.read_designs(store) if d.name == name)
        finetune.train_design(store, preset, store.load_model("dsa"), design, progress)
    return name


@task(name="evaluate-candidates", cache_policy=NO_CACHE)
def evaluate_task(root: str, run_id: str, overrides: dict) -> int:
    """Measure every model side by side; returns the number of models in phase3_candidates."""
    store, preset = _open(root, run_id, overrides)
    return len(ev.evaluate(store, preset)["phase3_candidates"])


@task(name="phase3-report", **IO)
def report_task(root: str, run_id: str, overrides: dict) -> str:
    """Charts, the report section and the markdown + table artifacts; returns the report path."""
    store, preset = _open(root, run_id, overrides)
    markdown = write_phase3_report(store, preset.train.seq_len, preset.optimize.time_lengths[-1])
    create_markdown_artifact(key=artifact_key(run_id, "phase3"), markdown=markdown, description="Phase 3 summary")
    table = store.read_table("phase3_candidates").drop(columns=["plan", "rationale"]).round(5)
    create_table_artifact(key=artifact_key(run_id, "phase3-candidates"), table=table.to_dict("records"))
    return store.path("report.html")
