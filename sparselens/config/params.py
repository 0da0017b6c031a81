"""Flow parameters as pydantic models (the Prefect UI shows them as forms), one per phase.

A phase's overrides are its typed fields that name a field of its config section, plus `settings` (any other
field of that section). They are validated against the section when the phase starts, recorded in the manifest
beside the phase's status, and used.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from sparselens.config.base import ConfigError, field_names
from sparselens.config.presets import PHASE_SECTIONS, PRESETS, SECTIONS

DEFAULT_ROOT = "./sparselens-data"


def _known_preset(name: str | None) -> str | None:
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return name


class RunParams(BaseModel):
    """Parameters of the whole pipeline (shown as a form in the Prefect UI)."""

    preset: str | None = Field(
        None, description="named preset of a new run: tiny (tests), quick (2-core CPU, the default), full (GPU)"
    )
    root: str = Field(DEFAULT_ROOT, description="run store root: a local path or an fsspec URL")
    run_id: str | None = Field(None, description="run id; a new one is made from the preset and time if empty")
    topk: int | None = Field(None, gt=0, description="override the preset's k (keys per query)")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='section overrides of a new run, e.g. {"capture": {"n_samples": 2}}; an existing run must match',
    )

    _check_preset = field_validator("preset")(_known_preset)


class PhaseParams(BaseModel):
    """Parameters of one phase re-run on an existing run."""

    PHASE: ClassVar[str] = "evaluate"

    run_id: str = Field(..., description="an existing run id under root/runs/")
    root: str = Field(DEFAULT_ROOT, description="run store root: a local path or an fsspec URL")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description='any field of this phase\'s config section, e.g. {"n_samples": 2}; validated and recorded',
    )

    def overrides(self) -> dict[str, Any]:
        """{field: value} of this phase's section to change: the typed fields that are set, plus `settings`."""
        valid = field_names(SECTIONS[PHASE_SECTIONS[self.PHASE]])
        typed = {n: getattr(self, n) for n in type(self).model_fields if n in valid and getattr(self, n) is not None}
        both = sorted(set(typed) & set(self.settings))
        if both:
            raise ConfigError(f"{self.PHASE}: {both} given both as a parameter and in settings; give each once")
        return typed | dict(self.settings)


class TrainParams(PhaseParams):
    PHASE: ClassVar[str] = "train"

    preset: str | None = Field(None, description="create the run with this preset if it does not exist yet")

    _check_preset = field_validator("preset")(_known_preset)


class CaptureParams(PhaseParams):
    """Optional overrides of the run's capture config (unset: the run's values)."""

    PHASE: ClassVar[str] = "capture"

    seq_lens: list[int] | None = Field(None, description="lengths to capture, tokens (quick: 128, 256, 512, 1024)")
    n_samples: int | None = Field(None, description="validation samples per content type and length")
    topk_samples: int | None = Field(None, description="samples per content type and length kept in attention_topk")
    fresh: bool = Field(False, description="drop any earlier capture of this run and start from nothing")


class InterpretParams(PhaseParams):
    """Optional overrides of the run's Phase 1 config (unset: the run's values)."""

    PHASE: ClassVar[str] = "interpret"

    view_content_types: list[str] | None = Field(None, description="content types drawn as maps and token views")
    full_map_max_len: int | None = Field(None, description="longest length drawn as a full map; longer: pooled")


class PatternsParams(PhaseParams):
    """Phase 2 parameters; empty fields keep the run's Phase 2 config."""

    PHASE: ClassVar[str] = "patterns"

    dask_address: str | None = Field(
        None, description="tcp://host:port of a running Dask scheduler; empty: start a LocalCluster for this flow run"
    )
    n_workers: int | None = Field(None, ge=1, description="LocalCluster workers (one core each); default 2")
    budget: float | None = Field(None, gt=0, le=1, description="classify budget, a fraction of the keys")
    efficiency_seq_lens: list[int] | None = Field(None, description="lengths of the recall-density curves")
    efficiency_samples: int | None = Field(
        None, ge=1, description="validation samples per model, content type and length of the recall-density curves"
    )
    sparsify_samples: int | None = Field(
        None, ge=1, description="validation samples per content type for sparsify-one-head"
    )


class OptimizeParams(PhaseParams):
    """Phase 3 parameters; empty fields keep the run's optimize config."""

    PHASE: ClassVar[str] = "optimize"

    families: list[str] | None = Field(
        None, description="designers to run: static, shared, pruned, adaptive_k, combined"
    )
    finetune_steps: int | None = Field(None, ge=1, description="fine-tuning steps of every candidate and the reference")


class BenchmarkParams(PhaseParams):
    """Phase 4 parameters; empty fields keep the run's benchmark config."""

    PHASE: ClassVar[str] = "benchmark"

    models: list[str] | None = Field(None, description="models to compare; empty: dense, dsa and every candidate")
    kernel_backend: str | None = Field(None, description="run every model on these kernels: reference, cpu, triton")


class MonitorParams(PhaseParams):
    """Monitor parameters; empty fields keep the run's monitor config."""

    PHASE: ClassVar[str] = "monitor"

    samples: int | None = Field(None, ge=1, description="alternating timed samples per batch")
    kernel_backend: str | None = Field(None, description="run both models on these kernels: reference, cpu, triton")


PHASE_PARAMS: dict[str, type[PhaseParams]] = {
    "train": TrainParams,
    "evaluate": PhaseParams,
    "capture": CaptureParams,
    "interpret": InterpretParams,
    "patterns": PatternsParams,
    "optimize": OptimizeParams,
    "benchmark": BenchmarkParams,
    "monitor": MonitorParams,
}
PHASES = tuple(PHASE_PARAMS)  # every phase, in order
PIPELINE_PHASES = PHASES[:-1]  # what `sparselens run` goes through; the monitor runs on its own schedule
