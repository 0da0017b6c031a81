"""Masks of fitted patterns and what they keep: ``pattern_mask``, ``coverage`` (attention recall), ``density`` and
the oracle's recall (conventions as in :mod:`sparselens.analysis.patterns`)."""

from __future__ import annotations

import numpy as np

from sparselens.analysis.patterns import KINDS, budget_keys, check_attention
from sparselens.masks import causal_mask_np


def pattern_mask(kind: str, params: dict, n_queries: int, n_keys: int, attn: np.ndarray | None = None) -> np.ndarray:
    """Causal ``bool[Q, K]`` mask of a fitted pattern; ``scattered`` needs ``attn`` (each query's top keys)."""
    pos = n_keys - n_queries + np.arange(n_queries)
    offset = pos[:, None] - np.arange(n_keys)[None, :]  # [Q, K]
    key = np.arange(n_keys)[None, :]  # [1, K]
    if kind == "sink":
        mask = key < params["n_sink"]
    elif kind == "local":
        mask = offset < params["window"]
    elif kind == "sink_local":
        mask = (key < params["n_sink"]) | (offset < params["window"])
    elif kind == "vertical_slash":
        mask = np.isin(key, params["columns"]) | np.isin(offset, params["offsets"])
    elif kind == "block":
        mask = _block_mask(params, pos, n_keys)
    elif kind == "scattered":
        if attn is None:
            raise ValueError("a scattered pattern is each query's own top keys: pass attn to pattern_mask")
        a = check_attention(attn)
        if a.shape != offset.shape:
            raise ValueError(f"attn shape {a.shape} does not match (n_queries, n_keys) = {offset.shape}")
        top = np.argsort(-a, axis=1, kind="stable")[:, : params["keys_per_query"]]  # [Q, k]
        mask = np.zeros(a.shape, dtype=bool)
        np.put_along_axis(mask, top, True, axis=1)
    elif kind == "broad":
        mask = np.ones((n_queries, n_keys), dtype=bool)
    else:
        raise ValueError(f"unknown pattern kind {kind!r}; expected one of {KINDS}")
    return np.broadcast_to(mask, offset.shape) & (offset >= 0)


def _block_mask(params: dict, pos: np.ndarray, n_keys: int) -> np.ndarray:
    block, rows, phase = params["block_size"], params["key_blocks"], params.get("phase", 0)  # block i: [ib - phase, ..)
    n_blocks = (n_keys - 1 + phase) // block + 1
    if len(rows) != n_blocks:
        raise ValueError(
            f"block params hold {len(rows)} query-block rows but K={n_keys} needs {n_blocks}; a block "
            "pattern is specific to the map it was fitted on"
        )
    table = np.zeros((n_blocks, n_blocks), dtype=bool)  # [query block, key block]
    for r, cols in enumerate(rows):
        table[r, cols] = True
    return table[((pos + phase) // block)[:, None], ((np.arange(n_keys) + phase) // block)[None, :]]  # [Q, K]


def coverage(attn: np.ndarray, mask: np.ndarray) -> float:
    """Attention recall of ``mask[Q, K]``: mean over queries of the mass of ``attn[Q, K]`` it keeps."""
    a = check_attention(attn)
    m = np.asarray(mask, dtype=bool)
    if m.shape != a.shape:
        raise ValueError(f"mask shape {m.shape} does not match attn shape {a.shape}")
    return float(np.where(m, a, 0.0).sum(1).mean())


def density(mask: np.ndarray) -> float:
    """nnz of ``mask[Q, K]`` over the causal area (query t at key K-Q+t); future keys are not counted."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not 1 <= m.shape[0] <= m.shape[1]:
        raise ValueError(f"mask must be [Q, K] with 1 <= Q <= K, got shape {m.shape}")
    q, k = m.shape
    return float((m & causal_mask_np(q, k)).sum() / ((k - q) * q + q * (q + 1) / 2))


def oracle_coverage(attn: np.ndarray, keys_per_query: int | None = None, *, at_density: float | None = None) -> float:
    """Recall of the oracle on ``attn[Q, K]``: each query keeps its own heaviest keys.

    ``keys_per_query=k``: every query keeps its top k (what ``classify_head`` compares with). ``at_density=d``: the
    round(d * causal area) heaviest entries of the whole map, the exact upper bound on the recall of any mask of that
    density (recall is linear in the mask); give exactly one.
    """
    a = check_attention(attn)
    if (keys_per_query is None) == (at_density is None):
        raise ValueError("give exactly one of keys_per_query or at_density")
    if keys_per_query is not None:
        k = budget_keys(int(keys_per_query), a.shape[1])
        return float(np.sort(a, axis=1)[:, -k:].sum(1).mean())
    q, k = a.shape
    n = round(float(at_density) * ((k - q) * q + q * (q + 1) / 2))
    top = np.sort(a, axis=None)[::-1][:n]  # [n] heaviest entries of the map
    return float(top.sum() / q)
