"""Phase 2 analysis: attention-pattern decomposition, classification and planted ground truth (numpy only)."""

from sparselens.analysis.masks import coverage, density, oracle_coverage, pattern_mask
from sparselens.analysis.patterns import (
    KINDS,
    STATIC_KINDS,
    PatternFit,
    budget_keys,
    check_attention,
    classify_head,
    decompose_head,
    fit_pattern,
    pattern_curve,
    prepare_head,
)
from sparselens.analysis.planted import plant_batch, plant_head, random_shape

__all__ = [
    "KINDS",
    "STATIC_KINDS",
    "PatternFit",
    "budget_keys",
    "check_attention",
    "classify_head",
    "coverage",
    "decompose_head",
    "density",
    "fit_pattern",
    "oracle_coverage",
    "pattern_curve",
    "pattern_mask",
    "prepare_head",
    "plant_batch",
    "plant_head",
    "random_shape",
]
