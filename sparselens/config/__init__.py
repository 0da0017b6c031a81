"""Configuration: one frozen section per part of the pipeline, the one table of named presets, flow parameters.

Presets are the only way sizes enter a run (`PRESETS["quick"]`); a run's resolved config is written once into its
manifest, and every phase reads its section from there. Every field says its unit or why it has its value.
"""

from sparselens.config.base import ConfigError, field_names
from sparselens.config.model import ATTENTION_KINDS, KERNEL_BACKENDS, ModelConfig
from sparselens.config.params import (
    PHASE_PARAMS,
    PHASES,
    PIPELINE_PHASES,
    BenchmarkParams,
    CaptureParams,
    InterpretParams,
    MonitorParams,
    OptimizeParams,
    PatternsParams,
    PhaseParams,
    RunParams,
    TrainParams,
)
from sparselens.config.phases import (
    BenchmarkConfig,
    CaptureConfig,
    InterpretConfig,
    MonitorConfig,
    OptimizeConfig,
    PatternsConfig,
)
from sparselens.config.plan import LAYER_KINDS, AttentionPlan, LayerPlan
from sparselens.config.presets import PHASE_SECTIONS, PRESETS, SECTIONS, Preset, get_preset, preset_from_dict
from sparselens.config.train import DEFAULT_MIX, EvalConfig, TrainConfig

__all__ = [
    "ATTENTION_KINDS",
    "LAYER_KINDS",
    "AttentionPlan",
    "LayerPlan",
    "DEFAULT_MIX",
    "KERNEL_BACKENDS",
    "PHASE_PARAMS",
    "PHASE_SECTIONS",
    "PHASES",
    "PRESETS",
    "SECTIONS",
    "BenchmarkConfig",
    "CaptureConfig",
    "CaptureParams",
    "ConfigError",
    "EvalConfig",
    "InterpretConfig",
    "InterpretParams",
    "ModelConfig",
    "MonitorConfig",
    "OptimizeParams",
    "PIPELINE_PHASES",
    "BenchmarkParams",
    "MonitorParams",
    "OptimizeConfig",
    "PatternsConfig",
    "PatternsParams",
    "PhaseParams",
    "Preset",
    "RunParams",
    "TrainConfig",
    "TrainParams",
    "field_names",
    "get_preset",
    "preset_from_dict",
]
