"""One head's attention map as Phase 2 sees it: rebuilt from `attention_topk` rows, then measured (numpy only).

A map is ``attn[T, T]`` with query t at key t (capture always has Q = K = T). `attention_topk` keeps each row's
top-m weights; :func:`rebuild_map` scatters them back and spreads the rest of each row evenly over its other
causal keys, so a dense head's map is its top-m approximation (the table's ``mass`` column says how much of each
row the list holds) and a DSA head's map (k <= m keys looked at) is exact.

Features (:func:`map_features`), all shares of the map's mass (mean over queries of row mass, as in recall):

- ``local_w{w}``: on offsets ``0..w-1`` (the query and the w - 1 keys before it), for each window in WINDOWS;
- ``vertical_conc``, ``slash_conc``, ``block_conc``: the best ``n = ceil(T / 16)`` columns, the best ``n``
  offsets (diagonals), and per query block of 16 positions its best ``ceil(n / 16)`` key blocks: how much a
  budget of about n keys per query buys when spent on one line family;
- ``dec_*``: :func:`sparselens.analysis.decompose_head` fractions (greedy, disjoint, summing to 1);
- ``kind, coverage, fit_density, oracle_coverage, fit_params``: :func:`sparselens.analysis.classify_head`.

Maps longer than MAX_QUERIES are measured on their last MAX_QUERIES queries over all keys (the long-context
queries, as MInference estimates patterns from the last 64): that bounds the cost per map by about
MAX_QUERIES x T instead of T^2.

Ground truth (:func:`needed_features`, synthetic samples): over queries with needed keys, ``needed_mass`` is the
mass on them, ``needed_argmax`` how often the heaviest key is one of them, ``needed_chance`` the mass a uniform
row would put there (n_needed / (t + 1)).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from sparselens.analysis.patterns import BUDGET, classify_head, decompose_head, pool_blocks, prepare_head
from sparselens.data.corpora import CORPORA
from sparselens.data.dataset import validation_samples
from sparselens.masks import causal_mask_np

WINDOWS = (1, 4, 16, 64)  # local windows, keys (offset 0 is the query's own key)
LINE_FRACTION = 1 / 16  # concentration budget: ceil(T * LINE_FRACTION) lines or keys per query
BLOCK = 16  # block size of block_conc, positions
MAX_QUERIES = 256  # longer maps are measured on their last MAX_QUERIES queries (over all keys)
HEAD_KEYS = ["model", "content_type", "seq_len", "layer", "head"]  # one head in one context
MAP_KEYS = ["model", "content_type", "seq_len", "sample_id", "layer", "head"]  # one captured map
DECOMPOSITION = ("sink", "local", "vertical", "slash", "block", "residual")


def rebuild_map(query_pos: np.ndarray, keys: list[np.ndarray], weights: list[np.ndarray], seq_len: int) -> np.ndarray:
    """attention_topk rows of one (sample, layer, head) -> ``attn[T, T]`` float64, rows summing to 1.

    query_pos [N] (every position 0..T-1 exactly once), keys/weights: N arrays of each row's kept keys/weights.
    The kept weights stay as captured; the mass a row did not keep (1 - its sum) is spread evenly over its other
    causal keys, the least-informative fill. Scaling the kept weights up instead would make every map look as
    concentrated as the top keys kept per row (at T >= 256 a broad head's top 32 keys would "explain" all of it,
    and no head could come out broad). Rows whose kept weights already cover every causal key are rescaled.
    """
    qp = np.asarray(query_pos, dtype=np.int64)
    if len(qp) != seq_len or np.unique(qp).size != seq_len or qp.min() != 0 or qp.max() != seq_len - 1:
        raise ValueError(
            f"attention_topk rows of one head must hold every query 0..{seq_len - 1} once, got {len(qp)} rows "
            f"(positions {qp.min() if len(qp) else None}..{qp.max() if len(qp) else None}); "
            "group by (model, content_type, seq_len, sample_id, layer, head) over complete partitions"
        )
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))  # [N]
    attn = np.zeros((seq_len, seq_len))
    attn[np.repeat(qp, lengths), np.concatenate(keys).astype(np.int64)] = np.concatenate(weights)
    total = attn.sum(1)  # [T]
    if (total <= 0).any():
        raise ValueError("an attention_topk row keeps no positive weight; the capture table is damaged")
    free = causal_mask_np(seq_len, seq_len) & (attn == 0)  # [T, T] causal keys the row did not keep
    n_free = free.sum(1)  # [T]
    fill = np.where(n_free > 0, np.clip(1.0 - total, 0.0, None) / np.maximum(n_free, 1), 0.0)  # [T]
    attn += free * fill[:, None]
    return attn / attn.sum(1, keepdims=True)


def concentration(attn: np.ndarray) -> dict[str, float]:
    """Local, vertical, slash and block concentration of a causal map ``attn[Q, K]`` (module docstring)."""
    head = prepare_head(attn)
    a, (q, k) = head.a, head.a.shape
    n = max(1, math.ceil(k * LINE_FRACTION))
    diag = head.diag.sum(0)  # [K] mass at each offset o (key p_t - o), summed over queries
    out = {f"local_w{w}": float(diag[:w].sum() / q) for w in WINDOWS}
    out["vertical_conc"] = float(-np.sort(-a.sum(0))[:n].sum() / q)
    out["slash_conc"] = float(-np.sort(-diag)[:n].sum() / q)
    tiles = pool_blocks(a, head.pos, BLOCK)  # [query block, key block] mass
    out["block_conc"] = float(-np.sort(-tiles, axis=1)[:, : math.ceil(n / BLOCK)].sum() / q)
    return out


def map_features(attn: np.ndarray, budget: float | int = BUDGET, max_queries: int | None = MAX_QUERIES) -> dict:
    """Concentration, decomposition and classification of one square map ``attn[T, T]`` (module docstring),
    measured on its last ``max_queries`` queries (all keys) when T is longer."""
    if max_queries is not None and attn.shape[0] > max_queries:
        attn = attn[-max_queries:]  # [max_queries, T]: query t sits at key T - max_queries + t
    head = prepare_head(attn)
    out = concentration(head)
    out |= {f"dec_{k}": v for k, v in decompose_head(head).items()}
    fit = classify_head(head, budget)
    params = {k: v for k, v in fit.params.items() if k != "key_blocks"}  # block tables are map-specific and long
    out |= {
        "kind": fit.kind,
        "coverage": fit.coverage,
        "fit_density": fit.density,
        "oracle_coverage": fit.oracle_coverage,
        "fit_params": json.dumps(params, sort_keys=True),
    }
    return out


def needed_positions(sample_id: str) -> list[np.ndarray] | None:
    """The ground-truth needed keys of a validation sample (``f"{content_type}-{T}-{i}"``), or None for text."""
    content_type, seq_len, index = sample_id.rsplit("-", 2)
    if content_type in CORPORA:
        return None
    sample = validation_samples(content_type, int(seq_len), int(index) + 1)[-1]
    if sample.sample_id != sample_id:
        raise ValueError(f"sample id {sample_id!r} is not a default-seed validation sample id")
    return sample.needed


def needed_features(attn: np.ndarray, needed: list[np.ndarray] | None) -> dict[str, float]:
    """How much of ``attn[T, T]`` lands on the ground-truth needed keys (NaN without ground truth)."""
    empty = {"needed_mass": np.nan, "needed_argmax": np.nan, "needed_chance": np.nan, "n_needed_queries": 0}
    if needed is None:
        return empty
    t = attn.shape[0]
    rows = np.repeat(np.arange(t), [len(n) for n in needed[:t]])  # [P] query of each needed pair
    if rows.size == 0:
        return empty
    cols = np.concatenate(needed[:t]).astype(np.int64)  # [P]
    truth = np.zeros(attn.shape, dtype=bool)
    truth[rows, cols] = True
    has = truth.any(1)  # [T] queries with ground truth
    best = attn.argmax(1)  # [T]
    return {
        "needed_mass": float((attn * truth).sum(1)[has].mean()),
        "needed_argmax": float(truth[np.arange(t), best][has].mean()),
        "needed_chance": float((truth.sum(1) / (np.arange(t) + 1))[has].mean()),
        "n_needed_queries": int(has.sum()),
    }


def topk_partition_features(
    df: pd.DataFrame, budget: float | int = BUDGET, max_queries: int | None = MAX_QUERIES
) -> pd.DataFrame:
    """Map features of every (model, content_type, seq_len, sample_id, layer, head) in attention_topk rows.

    df: complete groups (a Dask partition of one capture file holds whole heads); columns MAP_KEYS, query_pos,
    keys, weights, mass. Returns one row per group: MAP_KEYS, ``map_mass`` (mean share of a row the top-m list
    holds), the features of :func:`map_features` and :func:`needed_features`.
    """
    rows = []
    if df.empty:
        return pd.DataFrame(rows, columns=map_feature_columns())
    df = df.astype({"model": str, "content_type": str, "sample_id": str, "seq_len": int, "layer": int, "head": int})
    needed_cache: dict[str, list[np.ndarray] | None] = {}
    for key, g in df.groupby(MAP_KEYS, sort=True, observed=True):
        g = g.sort_values("query_pos")
        seq_len, sample_id = int(key[2]), str(key[3])
        attn = rebuild_map(g["query_pos"].to_numpy(), list(g["keys"]), list(g["weights"]), seq_len)
        if sample_id not in needed_cache:
            needed_cache[sample_id] = needed_positions(sample_id)
        row = dict(zip(MAP_KEYS, key, strict=True)) | {"map_mass": float(g["mass"].mean())}
        rows.append(row | map_features(attn, budget, max_queries) | needed_features(attn, needed_cache[sample_id]))
    return pd.DataFrame(rows, columns=map_feature_columns())


def map_feature_columns() -> list[str]:
    """Columns of :func:`topk_partition_features` output, in order."""
    return [
        *MAP_KEYS,
        "map_mass",
        *(f"local_w{w}" for w in WINDOWS),
        "vertical_conc",
        "slash_conc",
        "block_conc",
        *(f"dec_{k}" for k in DECOMPOSITION),
        "kind",
        "coverage",
        "fit_density",
        "oracle_coverage",
        "fit_params",
        "needed_mass",
        "needed_argmax",
        "needed_chance",
        "n_needed_queries",
    ]
