"""Training Phase 3's candidates fairly: the same steps, batches and learning rate for every candidate and for the
`reference` (the DSA model continued), after the recipe's last step.

A candidate with new (pruned) indexers first warms them up by KL against dense attention (indexer-only, like the
recipe's warm-up); then every candidate and the reference fine-tune `finetune_steps` sparse-stage steps (LM loss
for the main model, KL on the selected set for the indexers) on the batches of global steps D+W+S onward, with their
own warm-up + cosine peaking at `optimize.finetune_lr`. Checkpoints live under the candidate's name, so a killed
phase resumes; a candidate whose plan changed since its checkpoints were written starts over.
"""

from __future__ import annotations

import json

from sparselens.config import Preset
from sparselens.models.gpt import GPT
from sparselens.optimize.candidates import Design, build_candidate
from sparselens.training.loop import Progress, run_stage
from sparselens.training.stages import StageSpec

REFERENCE = "reference"
STAGES = ("p3_warmup", "p3_finetune")


def candidate_specs(name: str, preset: Preset, warm: bool) -> list[StageSpec]:
    """The stages a candidate (or the reference, warm=False) trains through."""
    opt, first = preset.optimize, preset.train.total_steps
    specs = []
    if warm and opt.warmup_steps:
        specs.append(StageSpec(name, "p3_warmup", first, opt.warmup_steps, "dense_kl", False, True, True))
    specs.append(StageSpec(name, "p3_finetune", first, opt.finetune_steps, "sparse_kl", True, True, True, True))
    return specs


def _finetune_preset(preset: Preset) -> Preset:
    return preset.with_section("train", lr=preset.optimize.finetune_lr)


def _reset_if_plan_changed(store, name: str, plan_json: str) -> None:
    """Drop a candidate's checkpoints when they were trained for another plan (a rerun after new calibration)."""
    path = f"optimize/{name}.plan.json"
    try:
        old = store.read_text(path)
    except FileNotFoundError:
        old = None
    if old is not None and json.loads(old) != json.loads(plan_json):
        store.clear_checkpoints(name)
    if old is None or json.loads(old) != json.loads(plan_json):
        store.write_text(path, plan_json)


def train_design(store, preset: Preset, dsa: GPT, design: Design, progress: Progress | None = None) -> GPT:
    """Build `design` on the DSA weights, warm up its new indexers, fine-tune; saves and returns the model."""
    _reset_if_plan_changed(store, design.name, design.plan.to_json())
    model = build_candidate(dsa, design, seed=preset.train.seed)
    for spec in candidate_specs(design.name, preset, warm=bool(design.new_indexers(dsa.cfg))):
        run_stage(store, spec, model, _finetune_preset(preset), store.run_id, progress)
    store.save_model(design.name, model)
    return model


def train_named(store, preset: Preset, name: str, progress: Progress | None = None) -> GPT:
    """Train the reference or the design called `name` (from the last design step)."""
    if name == REFERENCE:
        return train_reference(store, preset, progress)
    from sparselens.optimize.phase3 import read_designs

    designs = {d.name: d for d in read_designs(store)}
    if name not in designs:
        raise ValueError(f"no design called {name!r}; designs of this run: {sorted(designs)}")
    return train_design(store, preset, store.load_model("dsa"), designs[name], progress)


def train_reference(store, preset: Preset, progress: Progress | None = None) -> GPT:
    """The DSA model continued through the same fine-tuning steps and batches as every candidate."""
    model = store.load_model("dsa")
    for spec in candidate_specs(REFERENCE, preset, warm=False):
        run_stage(store, spec, model, _finetune_preset(preset), store.run_id, progress)
    store.save_model(REFERENCE, model)
    return model
