"""Run-level helpers shared by the CLI and the flows (no Prefect): ids, presets of a run, pre-flight checks."""

from __future__ import annotations

import re
import time

from sparselens.config import Preset, preset_from_dict
from sparselens.storage import RunStore
from sparselens.training.stages import STAGE_ORDER, stage_specs


def new_run_id(preset: Preset) -> str:
    """A fresh, sortable run id such as `quick-20261128-031500`."""
    return f"{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_preset(store: RunStore) -> Preset:
    """The resolved preset a run was created with (from its manifest)."""
    store.require_exists()
    return preset_from_dict(store.read_manifest()["config"])


def check_checkpoints(store: RunStore, preset: Preset) -> None:
    """Load each stage's latest checkpoint once, so a corrupt one fails before any work starts."""
    for stage in STAGE_ORDER:
        spec = stage_specs(preset.train)[stage]
        store.latest_checkpoint(spec.model_name, stage)


def artifact_key(run_id: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) that is stable per run and purpose."""
    return re.sub(r"[^a-z0-9-]+", "-", f"sparselens-{run_id}-{what}".lower()).strip("-")
