"""Attention-pattern maths (numpy, pandas and scikit-learn; no Dask, no model runs, no run store, no Prefect).

- `patterns`: decompose and classify one head's map into the pattern kinds (`decompose_head`, `classify_head`,
  `PatternFit`), fit a kind at a budget, its recall-density curve;
- `masks`: the mask of a fitted pattern, its coverage (attention recall), density, the oracle's recall;
- `planted`: synthetic maps of known kind (the classifier's ground truth);
- `efficiency`: recall-density curves of every method, AUC, regret against the oracle, FLOPs per query;
- `headmaps`: one map rebuilt from `attention_topk` rows (`rebuild_map`, used by Phase 1 and Phase 2 alike) and
  its features;
- `clustering`, `content`: heads clustered by their features; kinds per content type, selection relevance.

`sparselens.phase2` runs these over a run's capture tables on Dask and runs the models themselves.
"""

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
