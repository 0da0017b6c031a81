"""The broadened planted-head generator, its held-out configuration, phased block fits, and hand-labelled real heads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sparselens.analysis import KINDS, classify_head, coverage, density, pattern_mask
from sparselens.analysis.planted import CONFIGS, HELD_OUT, TUNING, labelled_heads, plant_batch, plant_head

REAL = Path(__file__).resolve().parents[1] / "data" / "real_heads.npz"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_configuration_plants_causal_probabilities_in_its_ranges(name):
    cfg = CONFIGS[name]
    for kind, attn, params in plant_batch(21, np.random.default_rng(5), config=name):
        q, k = attn.shape
        assert cfg.keys[0] <= k <= cfg.keys[1] and 1 <= q <= k
        np.testing.assert_allclose(attn.sum(1), 1.0, atol=1e-9)
        assert attn.min() >= 0 and not np.triu(attn[:, k - q :], 1).any()  # nothing after the query's own key
        if kind == "sink":
            assert cfg.sinks[0] <= params["n_sink"] <= max(cfg.sinks[0], min(cfg.sinks[1], k // 16))
        if kind == "block":
            assert params["block_size"] in cfg.block_sizes and 0 <= params["phase"] < params["block_size"]
            assert cfg.block_phase or params["phase"] == 0


def test_the_held_out_configuration_lies_outside_every_tuning_range():
    held, tuning = CONFIGS[HELD_OUT], [CONFIGS[n] for n in TUNING]
    assert HELD_OUT not in TUNING and len(TUNING) == len(CONFIGS) - 1
    assert held.keys[0] > max(c.keys[1] for c in tuning)  # longer maps than any tuned on
    assert not set(held.block_sizes) & {b for c in tuning for b in c.block_sizes}  # block sizes never tuned on
    assert held.sinks[1] > max(c.sinks[1] for c in tuning)


def test_a_tuning_configuration_is_classified_well():
    batch = plant_batch(140, np.random.default_rng(7), config="wide")
    confusion = Counter((kind, classify_head(attn).kind) for kind, attn, _ in batch)
    accuracy = sum(confusion[k, k] for k in KINDS) / len(batch)
    assert accuracy >= 0.95, confusion


def test_a_block_off_the_grid_is_a_block_and_its_fit_is_its_mask():
    rng = np.random.default_rng(2)
    attn, params = plant_head("block", 200, 200, rng, noise=0.1, config="blocks")
    for _ in range(50):  # a block of 4, 6 or 12 positions (not 8) that does not start at key 0
        if params["block_size"] % 8 and params["phase"]:
            break
        attn, params = plant_head("block", 200, 200, rng, noise=0.1, config="blocks")
    assert params["block_size"] % 8 and params["phase"], params
    fit = classify_head(attn)
    assert fit.kind == "block", (params, fit)
    mask = pattern_mask(fit.kind, fit.params, *attn.shape)
    assert coverage(attn, mask) == pytest.approx(fit.coverage, abs=1e-9)
    assert density(mask) == pytest.approx(fit.density, abs=1e-9)


def test_phased_block_masks_cover_the_keys_of_their_blocks():
    params = {"block_size": 4, "phase": 1, "key_blocks": [[0], [1], [2]]}  # blocks [-1, 3), [3, 7), [7, 11)
    mask = pattern_mask("block", params, 10, 10)
    assert mask[2].nonzero()[0].tolist() == [0, 1, 2] and mask[3].nonzero()[0].tolist() == [3]
    assert mask[9].nonzero()[0].tolist() == [7, 8, 9]


def test_hand_labelled_real_heads_are_classified_as_labelled():
    heads = labelled_heads(str(REAL))
    assert len(heads) >= 15 and {kind for kind, _, _ in heads} == {"broad", "local", "vertical_slash"}
    for kind, attn, meta in heads:
        assert attn.shape == (128, 128) and np.allclose(attn.sum(1), 1.0)
        assert classify_head(attn).kind == kind, meta
