"""Pattern decomposition and classification: planted-head accuracy, exact hand-made heads, masks, oracle, errors."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from sparselens.analysis import (
    KINDS,
    STATIC_KINDS,
    PatternFit,
    budget_keys,
    classify_head,
    coverage,
    decompose_head,
    density,
    fit_pattern,
    oracle_coverage,
    pattern_curve,
    pattern_mask,
    plant_batch,
    plant_head,
)

N_PLANTED = 525  # 75 maps of each kind


def _causal(q: int, k: int) -> np.ndarray:
    return (k - q + np.arange(q))[:, None] >= np.arange(k)[None, :]  # [Q, K]


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.where(_causal(*w.shape), w, 0.0)
    return w / w.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def planted() -> list[tuple[str, np.ndarray, dict]]:
    return plant_batch(N_PLANTED, np.random.default_rng(20240607))


@pytest.fixture(scope="module")
def predictions(planted) -> list[tuple[str, PatternFit]]:
    return [(kind, classify_head(attn)) for kind, attn, _ in planted]


def test_planted_heads_are_causal_probabilities(planted):
    shapes = Counter("Q<K" if attn.shape[0] < attn.shape[1] else "Q=K" for _, attn, _ in planted)
    assert shapes["Q<K"] >= 50 and shapes["Q=K"] >= 50
    for _, attn, _ in planted:
        q, k = attn.shape
        assert 64 <= k <= 256
        np.testing.assert_allclose(attn.sum(1), 1.0, atol=1e-9)
        assert attn.min() >= 0 and not attn[~_causal(q, k)].any()


def test_planted_accuracy_and_recall_per_kind(predictions):
    confusion = Counter((kind, fit.kind) for kind, fit in predictions)
    accuracy = sum(confusion[k, k] for k in KINDS) / len(predictions)
    recall = {k: confusion[k, k] / sum(confusion[k, j] for j in KINDS) for k in KINDS}
    assert accuracy >= 0.95, (accuracy, confusion)
    assert min(recall.values()) >= 0.9, (recall, confusion)


def test_fit_coverage_and_density_match_its_mask(planted, predictions):
    for (_, attn, _), (_, fit) in zip(planted[::5], predictions[::5], strict=True):
        mask = pattern_mask(fit.kind, fit.params, *attn.shape, attn=attn)
        assert coverage(attn, mask) == pytest.approx(fit.coverage, abs=1e-9)
        assert density(mask) == pytest.approx(fit.density, abs=1e-9)
        assert fit.kind == "broad" or mask.sum(1).max() <= fit.params["budget_keys"]  # within the budget


@pytest.mark.parametrize("kind", [*STATIC_KINDS, "scattered", "broad"])
def test_masks_are_causal(kind, planted):
    for _, attn, _ in planted[:14]:
        q, k = attn.shape
        params = {} if kind == "broad" else fit_pattern(attn, kind).params
        mask = pattern_mask(kind, params, q, k, attn=attn)
        assert mask.shape == (q, k) and mask.dtype == bool
        assert not mask[~_causal(q, k)].any()


def test_decomposition_is_nonnegative_and_sums_to_one(planted):
    extra = [_normalise(np.ones((40, 97))), _normalise(np.random.default_rng(1).random((1, 300)))]
    for attn in [a for _, a, _ in planted[:70]] + extra:
        parts = decompose_head(attn)
        assert list(parts) == ["sink", "local", "vertical", "slash", "block", "residual"]
        assert min(parts.values()) >= 0
        assert sum(parts.values()) == pytest.approx(1.0, abs=1e-6)


def test_decomposition_puts_mass_where_it_was_planted():
    rng = np.random.default_rng(3)
    assert decompose_head(plant_head("sink", 128, 128, rng, noise=0.05)[0])["sink"] > 0.8
    assert decompose_head(plant_head("local", 128, 128, rng, noise=0.05)[0])["local"] > 0.8
    uniform = decompose_head(_normalise(np.ones((128, 128))))
    assert uniform["residual"] == max(uniform.values())


def test_oracle_dominates_every_family_at_matched_density(planted):
    small = [attn for _, attn, _ in planted if attn.shape[1] <= 100][:7]
    for attn in small:
        for kind in (*STATIC_KINDS, "scattered"):
            dens, cov = pattern_curve(attn, kind)
            assert np.all(np.diff(dens) > 0) and np.all(np.diff(cov) > 0)
            for i in np.linspace(0, len(dens) - 1, 8).astype(int):
                assert oracle_coverage(attn, at_density=dens[i]) >= cov[i] - 1e-12
            mask = pattern_mask(kind, fit_pattern(attn, kind).params, *attn.shape, attn=attn)
            assert oracle_coverage(attn, at_density=density(mask)) >= coverage(attn, mask) - 1e-12
        for k in (1, 4, 9):  # per-query top-k against masks with the same keys per row
            for kind, params in (("local", {"window": k}), ("sink", {"n_sink": k})):
                assert oracle_coverage(attn, k) >= coverage(attn, pattern_mask(kind, params, *attn.shape)) - 1e-12


def test_exact_hand_made_heads():
    q = k = 120
    offset = np.arange(q)[:, None] - np.arange(k)[None, :]  # [Q, K]
    window = classify_head(_normalise(((offset >= 0) & (offset < 5)) * 1.0))
    assert (window.kind, window.params["window"], window.coverage) == ("local", 5, pytest.approx(1.0))
    previous = classify_head(_normalise(np.where(offset == 1, 1.0, 1e-9) + (np.arange(q) == 0)[:, None]))
    assert previous.kind == "local" and previous.params["window"] == 2
    sink = classify_head(_normalise(np.where(np.arange(k) < 2, 1.0, 1e-3)[None, :].repeat(q, 0)))
    assert (sink.kind, sink.params["n_sink"]) == ("sink", 2)
    lines = _normalise(((np.arange(k) == 37) | (offset == 11)) * 1.0 + 1e-4)
    vs = classify_head(lines)
    assert vs.kind == "vertical_slash" and 37 in vs.params["columns"] and 11 in vs.params["offsets"]
    assert classify_head(_normalise(np.ones((q, k)))).kind == "broad"


def test_budget_as_fraction_or_keys():
    assert budget_keys(0.125, 256) == 32 and budget_keys(20, 256) == 20 and budget_keys(500, 256) == 256
    attn = plant_head("local", 64, 200, np.random.default_rng(0), noise=0.1)[0]
    assert classify_head(attn, budget=25).params["budget_keys"] == 25
    for bad in (0, -3, 0.0, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="budget"):
            budget_keys(bad, 64)


def test_pattern_fit_is_frozen():
    fit = classify_head(_normalise(np.ones((16, 16))))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.kind = "local"


@pytest.mark.parametrize(
    ("attn", "message"),
    [
        (np.full((2, 8, 8), 1 / 8), "2-D"),
        (np.full(8, 1 / 8), "2-D"),
        (np.full((9, 8), 1 / 8), "transpose"),
        (_normalise(np.ones((8, 8))) - 0.01, "negative"),
        (_normalise(np.ones((8, 8))) * 0.5, r"sum to 1.*renormalise"),
        (np.full((8, 8), 1 / 8), "future keys"),
        (np.where(_causal(8, 8), np.nan, 0.0), "NaN"),
    ],
    ids=["3d", "1d", "q-gt-k", "negative", "unnormalised", "not-causal", "nan"],
)
def test_bad_input_says_what_to_do(attn, message):
    with pytest.raises(ValueError, match=message):
        classify_head(attn)
    with pytest.raises(ValueError, match=message):
        decompose_head(attn)


def test_unknown_kinds_and_missing_attn_are_refused():
    attn = _normalise(np.ones((8, 8)))
    with pytest.raises(ValueError, match="unknown"):
        pattern_mask("diagonal", {}, 8, 8)
    with pytest.raises(ValueError, match="pass attn"):
        pattern_mask("scattered", {"keys_per_query": 2}, 8, 8)
    with pytest.raises(ValueError, match="unknown"):
        plant_head("diagonal", 8, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="exactly one"):
        oracle_coverage(attn)
