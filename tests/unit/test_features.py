"""Head maps and features: rebuilding maps from top-m rows, concentration, ground truth, per-partition features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sparselens.analysis import KINDS, classify_head, plant_head
from sparselens.analysis.headmaps import (
    concentration,
    map_feature_columns,
    map_features,
    needed_features,
    needed_positions,
    rebuild_map,
    topk_partition_features,
)
from sparselens.phase2.features import _finish_query_features, query_partials


def _line_map(t: int, offset: int | None = None, column: int | None = None) -> np.ndarray:
    """All of every row on one offset (slash) or one column (vertical), falling back to the query's own key."""
    a = np.zeros((t, t))
    for q in range(t):
        key = q - offset if offset is not None else column
        a[q, key if key is not None and 0 <= key <= q else q] = 1.0
    return a


def _topk_rows(attn: np.ndarray, m: int, **keys) -> pd.DataFrame:
    """attention_topk-like rows (top-m keys and weights per query) of one head."""
    order = np.argsort(-attn, axis=1, kind="stable")[:, :m]  # [T, m]
    weights = np.take_along_axis(attn, order, axis=1)
    rows = [
        {
            **keys,
            "query_pos": q,
            "keys": order[q][weights[q] > 0].astype(np.int32),
            "weights": weights[q][weights[q] > 0].astype(np.float32),
            "mass": float(weights[q].sum()),
        }
        for q in range(len(attn))
    ]
    return pd.DataFrame(rows)


def test_rebuild_map_keeps_top_m_weights_spreads_the_rest_and_rejects_missing_queries():
    attn, _ = plant_head("broad", 40, 40, np.random.default_rng(0))
    rows = _topk_rows(attn, 8)
    rebuilt = rebuild_map(rows["query_pos"].to_numpy(), list(rows["keys"]), list(rows["weights"]), 40)
    np.testing.assert_allclose(rebuilt.sum(1), 1.0, atol=1e-6)
    assert np.allclose(np.triu(rebuilt, 1), 0.0)  # causal
    top = np.argsort(-attn[-1])[:8]
    np.testing.assert_allclose(rebuilt[-1, top], attn[-1, top], rtol=1e-5)  # kept weights as captured
    rest = np.setdiff1d(np.arange(40), top)
    np.testing.assert_allclose(rebuilt[-1, rest], (1 - attn[-1, top].sum()) / len(rest), rtol=1e-5)
    with pytest.raises(ValueError, match="every query"):
        rebuild_map(rows["query_pos"].to_numpy()[1:], list(rows["keys"])[1:], list(rows["weights"])[1:], 40)


def test_a_broad_head_rebuilt_from_its_top_keys_is_still_broad():
    """Rescaling the top 32 keys of each row to 1 made a broad head look concentrated (classified scattered at
    T = 256); the rebuilt map must keep the head's unkept mass spread out."""
    attn, _ = plant_head("broad", 256, 256, np.random.default_rng(1))
    assert classify_head(attn).kind == "broad"
    rows = _topk_rows(attn, 32)
    rebuilt = rebuild_map(rows["query_pos"].to_numpy(), list(rows["keys"]), list(rows["weights"]), 256)
    assert classify_head(rebuilt).kind == "broad"


def test_concentration_finds_the_line_a_map_lives_on():
    t = 64
    slash = concentration(_line_map(t, offset=5))
    vertical = concentration(_line_map(t, column=3))
    assert slash["slash_conc"] == pytest.approx(1.0)
    assert slash["local_w4"] == pytest.approx(5 / t)  # queries 0..4 fall back to their own key
    assert slash["local_w16"] == pytest.approx(1.0)
    assert vertical["vertical_conc"] == pytest.approx(1.0)
    assert vertical["slash_conc"] < 0.5 and vertical["local_w1"] == pytest.approx(4 / t)  # queries 0..3
    for feats in (slash, vertical):
        assert all(0 <= v <= 1 + 1e-12 for v in feats.values())


def test_map_features_classify_planted_heads_and_decompose_to_one():
    rng = np.random.default_rng(3)
    for kind in ("local", "sink_local", "vertical_slash"):
        attn, _ = plant_head(kind, 96, 96, rng, noise=0.05)
        feats = map_features(attn)
        assert feats["kind"] == kind
        assert sum(feats[f"dec_{k}"] for k in ("sink", "local", "vertical", "slash", "block", "residual")) == (
            pytest.approx(1.0, abs=1e-6)
        )
    long, _ = plant_head("local", 300, 300, rng, noise=0.05)
    truncated = map_features(long, max_queries=100)  # the last 100 queries over all 300 keys
    assert truncated["kind"] == "local" and truncated["kind"] in KINDS


def test_needed_features_against_ground_truth():
    t = 12
    needed = [np.array([q // 2], dtype=np.int32) if q % 3 == 0 else np.zeros(0, np.int32) for q in range(t)]
    exact = np.zeros((t, t))
    exact[np.arange(t), np.arange(t) // 2] = 1.0
    feats = needed_features(exact, needed)
    assert feats["needed_mass"] == pytest.approx(1.0) and feats["needed_argmax"] == pytest.approx(1.0)
    assert feats["n_needed_queries"] == 4
    assert feats["needed_chance"] == pytest.approx(np.mean([1 / (q + 1) for q in (0, 3, 6, 9)]))
    uniform = np.tri(t) / np.arange(1, t + 1)[:, None]
    assert needed_features(uniform, needed)["needed_mass"] == pytest.approx(feats["needed_chance"])
    assert np.isnan(needed_features(exact, None)["needed_mass"])


def test_needed_positions_regenerates_the_validation_sample():
    needed = needed_positions("induction-64-1")
    assert len(needed) == 64 and any(len(n) for n in needed)
    assert all((n <= q).all() for q, n in enumerate(needed))
    assert needed_positions("code-64-0") is None


def test_topk_partition_features_one_row_per_head():
    rng = np.random.default_rng(1)
    frames = []
    for head, kind in enumerate(("local", "vertical_slash")):
        attn, _ = plant_head(kind, 64, 64, rng, noise=0.05)
        frames.append(
            _topk_rows(
                attn,
                32,
                model="dense",
                content_type="induction",
                seq_len=64,
                sample_id="induction-64-0",
                layer=1,
                head=head,
            )
        )
    out = topk_partition_features(pd.concat(frames, ignore_index=True))
    assert list(out.columns) == map_feature_columns()
    assert list(out["kind"]) == ["local", "vertical_slash"]
    assert (out["n_needed_queries"] > 0).all() and out["map_mass"].between(0.5, 1.0).all()


def test_query_partials_average_over_partitions_and_skip_unchosen_queries():
    rows = []
    for part, sample in enumerate(("a", "b")):
        for q in range(6):
            rows.append(
                {
                    "model": "dsa",
                    "content_type": "code",
                    "seq_len": 6,
                    "sample_id": sample,
                    "layer": 0,
                    "head": 1,
                    "query_pos": q,
                    "entropy": np.log(q + 1),
                    "max_weight": 0.5,
                    "sink_mass": part,
                    "local_mass": 1.0,
                    "mean_distance": q / 2,
                    "k90": q + 1,
                    "k95": q + 1,
                    "recall": 0.25 if q >= 4 else 1.0,
                    "oracle_recall": 1.0,
                    "head_recall": 0.5,
                    "needed_recall": np.nan,
                }
            )
    df = pd.DataFrame(rows)
    parts = pd.concat([query_partials(df[df.sample_id == s], topk=4) for s in ("a", "b")])
    sums = parts.groupby(["model", "content_type", "seq_len", "layer", "head"]).sum().reset_index()
    out = _finish_query_features(sums).iloc[0]
    assert out["n_queries"] == 10  # t >= 1 of two samples
    assert out["sink_mass"] == pytest.approx(0.5) and out["entropy_norm"] == pytest.approx(1.0)
    assert out["k90_frac"] == pytest.approx(1.0) and out["distance_frac"] == pytest.approx(
        np.mean([q / 2 / (q + 1) for q in range(1, 6)])
    )
    assert out["dsa_recall"] == pytest.approx(0.25)  # only queries t >= k = 4 count
    assert np.isnan(out["dsa_needed_recall"])
