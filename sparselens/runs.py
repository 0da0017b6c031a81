"""A run's configuration and phases (no Prefect): create or reopen a run, resolve a phase's config, time a phase.

The manifest holds the run's resolved config (every section of a `Preset`, written once when the run is created)
and, per phase, its status, timing and the overrides it ran with. A phase reads its section from there with
`phase_config`; `phase` validates a phase's overrides, records them beside its status and yields the section.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

from sparselens.config import PHASE_SECTIONS, ConfigError, Preset, get_preset, preset_from_dict
from sparselens.storage import RunStore
from sparselens.storage.manifest import to_jsonable
from sparselens.training.stages import STAGE_ORDER, stage_specs

DEFAULT_PRESET = "quick"
Overrides = dict[str, Any]  # {field: value} of one section
SectionOverrides = dict[str, Overrides]  # {section: {field: value}}


def new_run_id(preset: Preset) -> str:
    """A fresh, sortable run id such as `quick-20261128-031500`."""
    return f"{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_preset(store: RunStore) -> Preset:
    """The resolved preset a run was created with (from its manifest)."""
    store.require_exists()
    return preset_from_dict(store.read_manifest()["config"])


def requested_preset(name: str | None, topk: int | None = None, overrides: SectionOverrides | None = None) -> Preset:
    """The config a new run gets: preset `name` (default quick) with section overrides and k; ConfigError if bad."""
    return get_preset(DEFAULT_PRESET if name is None else name).with_overrides(overrides, topk)


def check_run_config(
    store: RunStore, name: str | None, topk: int | None = None, overrides: SectionOverrides | None = None
) -> Preset:
    """The existing run's preset, if what was asked (preset, k, section values; None = not asked) matches it.

    A run keeps the config it was created with, so asking for anything else is a ConfigError naming both.
    """
    have = run_preset(store)
    if name is not None:
        get_preset(name)  # an unknown name is an error, even for an existing run
    asked = have.with_overrides(overrides, topk)  # validates and converts what was asked
    differ = [("preset", have.name, name)] if name is not None and name != have.name else []
    if asked.model.topk != have.model.topk:
        differ.append(("model.topk (k)", have.model.topk, asked.model.topk))
    for section, fields in (overrides or {}).items():
        for field in fields:
            old, new = getattr(have.section(section), field), getattr(asked.section(section), field)
            if old != new and (section, field) != ("model", "topk"):
                differ.append((f"{section}.{field}", old, new))
    if differ:
        what = "; ".join(f"{key}: run has {old!r}, asked for {new!r}" for key, old, new in differ)
        raise ConfigError(
            f"run {store.run_id!r} was created with preset {have.name!r} (k={have.model.topk}) and keeps that "
            f"config ({what}). Rerun without those options to resume it, or pick a new --run-id."
        )
    return have


def open_run(
    store: RunStore, name: str | None, topk: int | None = None, overrides: SectionOverrides | None = None
) -> Preset:
    """Create the run with the requested config, or check that an existing run was created with it; its preset."""
    if store.exists():
        return check_run_config(store, name, topk, overrides)
    preset = requested_preset(name, topk, overrides)
    store.create(preset.to_dict(), created_with={"preset": preset.name, "topk": topk, "overrides": overrides or {}})
    return preset


def _section(phase: str) -> str:
    if phase not in PHASE_SECTIONS:
        raise ConfigError(f"unknown phase {phase!r}; phases are {', '.join(PHASE_SECTIONS)}")
    return PHASE_SECTIONS[phase]


def recorded_overrides(store: RunStore, phase: str) -> Overrides:
    """The overrides the phase's latest run was started with ({} when none or it never ran)."""
    _section(phase)
    return dict(store.read_manifest().get("phases", {}).get(phase, {}).get("overrides", {}))


def phase_preset(store: RunStore, phase: str, overrides: Overrides | None = None) -> Preset:
    """The run's preset with `overrides` applied to the phase's section (None: those recorded for the phase).

    Unknown fields and bad values are a ConfigError naming the section and its valid fields.
    """
    section = _section(phase)
    changes = recorded_overrides(store, phase) if overrides is None else overrides
    return run_preset(store).with_overrides({section: changes} if changes else None)


def phase_config(store: RunStore, phase: str, overrides: Overrides | None = None) -> Any:
    """The phase's config section as it runs: the manifest's section plus the phase's overrides (see phase_preset)."""
    return phase_preset(store, phase, overrides).section(_section(phase))


@contextlib.contextmanager
def phase(store: RunStore, name: str, overrides: Overrides | None = None) -> Iterator[Any]:
    """Run phase `name` of an existing run: validate `overrides`, record them and 'running', yield the section.

    On exit the phase is marked 'completed' with its wall time, or 'failed' (with the error) if the block raised;
    nothing is recorded when the run does not exist or the overrides are invalid.
    """
    store.require_exists()
    overrides = dict(overrides or {})
    cfg = phase_config(store, name, overrides)  # ConfigError before anything is written
    t0 = time.perf_counter()
    store.update_phase(name, "running", overrides=to_jsonable(overrides))
    try:
        yield cfg
    except BaseException as err:
        store.update_phase(name, "failed", time.perf_counter() - t0, error=f"{type(err).__name__}: {err}"[:2000])
        raise
    store.update_phase(name, "completed", time.perf_counter() - t0)


def check_checkpoints(store: RunStore, preset: Preset) -> None:
    """Load each stage's latest checkpoint once, so a corrupt one fails before any work starts."""
    for stage in STAGE_ORDER:
        spec = stage_specs(preset.train)[stage]
        store.latest_checkpoint(spec.model_name, stage)


def artifact_key(run_id: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) that is stable per run and purpose."""
    return re.sub(r"[^a-z0-9-]+", "-", f"sparselens-{run_id}-{what}".lower()).strip("-")
