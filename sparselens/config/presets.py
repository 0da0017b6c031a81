"""`Preset`: every section of a run's configuration, and `PRESETS`, the one table of named presets.

A run's resolved config is `preset.to_dict()` (plus any overrides given when it was created), written once into
its manifest; every phase reads its section from there (`sparselens.runs.phase_config`) and applies the flow's
overrides, which the manifest records beside the phase's status.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sparselens.config.base import ConfigError, replace_checked, section_from_dict
from sparselens.config.model import ModelConfig
from sparselens.config.phases import (
    BenchmarkConfig,
    CaptureConfig,
    InterpretConfig,
    MonitorConfig,
    OptimizeConfig,
    PatternsConfig,
)
from sparselens.config.train import EvalConfig, TrainConfig

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "capture": CaptureConfig,
    "interpret": InterpretConfig,
    "patterns": PatternsConfig,
    "optimize": OptimizeConfig,
    "benchmark": BenchmarkConfig,
    "monitor": MonitorConfig,
}
PHASE_SECTIONS = {  # phase name -> the section its overrides change
    "train": "train",
    "evaluate": "eval",
    "capture": "capture",
    "interpret": "interpret",
    "patterns": "patterns",
    "optimize": "optimize",
    "benchmark": "benchmark",
    "monitor": "monitor",
}


@dataclass(frozen=True)
class Preset:
    """A whole run configuration: one frozen section per part of the pipeline."""

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    capture: CaptureConfig = CaptureConfig()
    interpret: InterpretConfig = InterpretConfig()
    patterns: PatternsConfig = PatternsConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    monitor: MonitorConfig = MonitorConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section(self, name: str) -> Any:
        """Section `name` (one of SECTIONS)."""
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section {name!r}; sections are {', '.join(SECTIONS)}")
        return getattr(self, name)

    def with_section(self, name: str, **changes: Any) -> Preset:
        """A copy with fields of section `name` replaced; unknown fields or bad values are a ConfigError."""
        return dataclasses.replace(self, **{name: replace_checked(self.section(name), name, changes)})

    def with_overrides(self, overrides: dict[str, dict[str, Any]] | None = None, topk: int | None = None) -> Preset:
        """A copy with `{section: {field: value}}` overrides applied (and the model's k when `topk` is given)."""
        out = self
        for name, changes in (overrides or {}).items():
            out = out.with_section(name, **changes)
        return out if topk is None else out.with_section("model", topk=topk)


def _tiny() -> Preset:
    return Preset(
        name="tiny",
        description="Tests: a 2-layer d=32 model, 60 dense + 60 warm-up + 20 sparse steps; seconds on a CPU.",
        model=ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=256, indexer_heads=2, indexer_dim=8, topk=8),
        train=TrainConfig(
            seq_len=64,
            batch_size=4,
            dense_steps=60,
            warmup_steps=60,
            sparse_steps=20,
            lr=1e-2,
            lr_warmup_steps=5,
            resume_warmup_steps=2,
            indexer_lr=1e-2,
            checkpoint_every=10,
            log_every=10,
        ),
        eval=EvalConfig(length_multipliers=(1, 2), n_samples=2, batch_size=2, recall_samples=2),
        capture=CaptureConfig(seq_lens=(32, 64, 128), n_samples=2, topk_samples=1, top_m=16, chunk_elements=2**18),
        interpret=InterpretConfig(full_map_max_len=64, pooled_blocks=16, view_content_types=("assoc_recall",)),
        patterns=PatternsConfig(efficiency_samples=2, sparsify_samples=2, density_points=16, max_k=4),
        optimize=OptimizeConfig(
            finetune_steps=10,
            warmup_steps=5,
            calibration_samples=2,
            eval_samples=2,
            window_keys=6,
            time_lengths=(64, 128),
            core_length=256,
            timing_repeats=3,
        ),
        benchmark=BenchmarkConfig(
            quality_samples=3,
            bootstrap=200,
            retrieval_depths=(0.0, 0.5, 1.0),
            retrieval_samples=2,
            prefill_lens=(64, 256),
            decode_contexts=(64, 512),
            decode_tokens=4,
            decode_fill_chunk=64,
            repeats=2,
            rss=False,  # a fresh interpreter per model costs seconds; the unit test turns it on once
        ),
        # context 512: the reference kernels' prefill is ~5x the fast path's there, so a run forced onto them is a
        # clear regression; 10 samples against >= 20 of history can reach p < 0.001 (8 against 8 cannot)
        monitor=MonitorConfig(context=512, decode_tokens=16, samples=10, loss_samples=1),
    )


# Measured in benchmarks/results/task_trials.md: induction heads form only when the first steps are all induction
# (250 steps: answer accuracy 0.72; 80% induction + 20% brackets, or 50% + 50% recall: no heads by step 250); after
# that, 30% brackets and 20% each copy task bring all three tasks to >= 0.93 by step 650 of the dense schedule.
QUICK_MIX = {"code": 0.15, "prose": 0.15, "assoc_recall": 0.2, "induction": 0.2, "brackets": 0.3}


def _quick() -> Preset:
    return Preset(
        name="quick",
        description=(
            "A 2-core CPU in about 12 minutes: d 128, 4 layers, 4 heads, T 256, k 32 = T/8, HI 4, DI 64, batch 16. "
            "k = T/8 keeps the sparse budget meaningful at the training length and 32x below 4T = 1024. "
            "The first 250 steps train on induction only, so that copying heads form."
        ),
        model=ModelConfig(),
        # 1000 + 100 + 500 steps: at 500 + 100 + 250 the task mix's text (30%, none in the first 250 steps) was
        # still learning fast and DSA's 100 frozen warm-up steps left code / prose at 1.07x / 1.06x dense.
        train=TrainConfig(
            dense_steps=1000,
            warmup_steps=100,
            sparse_steps=500,
            mix=dict(QUICK_MIX),
            early_mix={"induction": 1.0},
            early_mix_steps=250,
        ),
    )


def _full() -> Preset:
    return Preset(
        name="full",
        description=(
            "GPU-sized (documented, not run on the CPU): d 512, 8 layers, 8 heads, T 2048, k 256, HI 8, DI 64, "
            "batch 32; ~10k dense + 1k warm-up + 4k sparse steps."
        ),
        model=ModelConfig(
            n_layers=8, d_model=512, n_heads=8, max_seq_len=8192, indexer_heads=8, indexer_dim=64, topk=256
        ),
        train=TrainConfig(
            seq_len=2048,
            batch_size=32,
            dense_steps=10_000,
            warmup_steps=1_000,
            sparse_steps=4_000,
            lr=1e-3,
            lr_warmup_steps=500,
            resume_warmup_steps=100,
            indexer_lr=1e-3,
            checkpoint_every=500,
            log_every=50,
        ),
        eval=EvalConfig(n_samples=64, batch_size=4, recall_samples=16),
        # T = 8192 would need query-tiled capture (8 heads x 8192^2 fp32 = 2 GiB per map); 4096 fits one GPU.
        capture=CaptureConfig(
            seq_lens=(1024, 2048, 4096), n_samples=16, topk_samples=2, chunk_elements=2**28, device="cuda"
        ),
        interpret=InterpretConfig(full_map_max_len=512, pooled_blocks=128, panel_px=200),
        patterns=PatternsConfig(efficiency_samples=8, sparsify_samples=8, density_points=60),
        optimize=OptimizeConfig(
            finetune_steps=1000,
            warmup_steps=200,
            calibration_samples=32,
            eval_samples=64,
            window_keys=252,
            time_lengths=(2048, 8192),
            core_length=32768,
        ),
        benchmark=BenchmarkConfig(quality_samples=64, prefill_lens=(2048, 8192, 32768), repeats=9),
        monitor=MonitorConfig(context=32768, threads=8),
    )


PRESETS: dict[str, Preset] = {p.name: p for p in (_tiny(), _quick(), _full())}


def get_preset(name: str) -> Preset:
    """The named preset; a ConfigError listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None


def preset_from_dict(data: dict) -> Preset:
    """Rebuild a Preset from `Preset.to_dict()` (as stored in a run's manifest).

    A manifest written before a section existed (runs of an older sparselens) gets that section from the preset of
    the same name; an unknown name there, or an unknown field anywhere, is a ConfigError.
    """
    unknown = sorted(set(data) - set(SECTIONS) - {"name", "description"})
    if unknown:
        raise ConfigError(f"run config has unknown sections {unknown}; sections are {', '.join(SECTIONS)}")
    missing = [name for name in SECTIONS if name not in data]
    base = get_preset(data.get("name")) if missing else None
    sections = {
        name: section_from_dict(cls, data[name], name) if name in data else base.section(name)
        for name, cls in SECTIONS.items()
    }
    return Preset(name=data["name"], description=data.get("description", ""), **sections)
