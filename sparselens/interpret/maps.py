"""Attention maps, long-context profiles and token-selection views rebuilt from the capture tables (numpy).

Maps come from `attention_topk` (the top-m keys per query and head), rebuilt by the one function Phase 2 uses too,
`sparselens.analysis.headmaps.rebuild_map`: exact for a DSA layer whose k <= m; for dense attention the kept weights
as captured, with the tail below the m-th weight (the table's 1 - mass) spread evenly over the row's other keys.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sparselens.analysis.headmaps import rebuild_map
from sparselens.masks import causal_mask_np

FUTURE = np.nan  # value of map cells a query may not look at (drawn in grey)


def attention_maps(rows: pd.DataFrame, n_heads: int, seq_len: int) -> np.ndarray:
    """attention_topk rows of one model, sample and layer (every head and query) -> maps [H, T, T] float32, each
    head's as `rebuild_map` makes it (rows sum to 1), NaN above the diagonal."""
    maps = np.zeros((n_heads, seq_len, seq_len), dtype=np.float32)
    for head, g in rows.groupby("head", sort=True):
        g = g.sort_values("query_pos")
        maps[int(head)] = rebuild_map(g["query_pos"].to_numpy(), list(g["keys"]), list(g["weights"]), seq_len)
    maps[:, ~causal_mask_np(seq_len, seq_len)] = FUTURE
    return maps


def pool_maps(maps: np.ndarray, blocks: int) -> tuple[np.ndarray, int]:
    """Block-pool maps [H, T, T] to at most `blocks` per side: mean mass one query of a query block puts on a
    key block (NaN where the key block lies wholly in the future). Returns (pooled [H, nb, nb], block size)."""
    h, t, _ = maps.shape
    size = -(-t // blocks)
    nb = -(-t // size)
    padded = np.zeros((h, nb * size, nb * size), dtype=np.float64)
    padded[:, :t, :t] = np.nan_to_num(maps, nan=0.0)
    sums = padded.reshape(h, nb, size, nb, size).sum(axis=(2, 4))  # [H, nb, nb]
    queries = np.minimum(size, t - np.arange(nb) * size)  # [nb] real queries per block
    pooled = sums / queries[None, :, None]
    pooled[:, ~causal_mask_np(nb, nb)] = FUTURE  # key blocks wholly after the query block
    return pooled.astype(np.float32), size


def profiles(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slash and vertical profiles of maps [H, T, T].

    slash[h, d]: mean over queries t >= d of a(t, t - d) (mass at distance d: diagonal lines);
    vertical[h, s]: mean over queries t >= s of a(t, s) (mass on key s: column lines). Both [H, T].
    """
    h, t, _ = maps.shape
    clean = np.nan_to_num(maps, nan=0.0)
    rows = np.arange(t)[:, None]
    cols = rows - np.arange(t)[None, :]  # [T, D]: key of query t at distance d
    shifted = np.where(cols >= 0, clean[:, rows, np.clip(cols, 0, None)], 0.0)  # [H, T, D]
    counts = np.arange(t, 0, -1)  # queries that reach distance d (or see key s): T - d
    return shifted.sum(1) / counts, clean.sum(1) / counts


def profile_frame(maps: np.ndarray) -> pd.DataFrame:
    """Long form of `profiles`: columns head, kind ('slash' | 'vertical'), position, mass."""
    slash, vertical = profiles(maps)
    h, t = slash.shape
    parts = []
    for kind, values in (("slash", slash), ("vertical", vertical)):
        parts.append(
            pd.DataFrame(
                {
                    "head": np.repeat(np.arange(h, dtype=np.int32), t),
                    "kind": kind,
                    "position": np.tile(np.arange(t, dtype=np.int32), h),
                    "mass": values.reshape(-1).astype(np.float32),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def pick_query(sel: pd.DataFrame, k: int) -> int:
    """The query a token view shows: with ground truth, the query (t >= k) whose needed keys lie farthest back;
    otherwise the last query. sel: selections rows of one sample and layer."""
    rows = sel.sort_values("query_pos")
    if rows["needed"].notna().any():
        reach = [
            int(t - min(n)) if n is not None and len(n) else -1
            for t, n in zip(rows.query_pos, rows.needed, strict=True)
        ]
        reach = np.where(rows["query_pos"].to_numpy() >= k, reach, -1)
        if reach.max() >= 0:
            best = np.flatnonzero(reach == reach.max())[-1]
            return int(rows["query_pos"].iloc[best])
    return int(rows["query_pos"].max())


def display_char(byte: int) -> str:
    """A visible one-character stand-in for a byte: newline as a return arrow, space and controls as dots."""
    if byte == 10:
        return "\u21b5"
    if byte == 32:
        return "\u00b7"
    if 32 < byte < 127:
        return chr(byte)
    return "\u2592"


def token_view(sel: pd.DataFrame, query: int, width: int) -> pd.DataFrame:
    """Token-selection view of one sample: per layer and position 0..query, the character and its state.

    sel: selections rows of one sample (all layers). state: 'query', 'selected & needed', 'selected',
    'needed, missed', or 'not selected'. Columns layer, position, line, col, char, state.
    """
    parts = []
    for layer, g in sel.groupby("layer", sort=True):
        g = g.set_index("query_pos").sort_index()
        tokens = g["token"].to_numpy()[: query + 1]
        chosen = set(np.asarray(g.at[query, "selected"]).tolist())
        need_row = g.at[query, "needed"]
        needed = set(np.asarray(need_row).tolist()) if need_row is not None else set()
        pos = np.arange(query + 1)
        state = np.full(query + 1, "not selected", dtype=object)
        state[[p for p in pos if p in needed]] = "needed, missed"
        state[[p for p in pos if p in chosen]] = "selected"
        state[[p for p in pos if p in chosen and p in needed]] = "selected & needed"
        state[query] = "query"
        parts.append(
            pd.DataFrame(
                {
                    "layer": int(layer),
                    "position": pos,
                    "line": pos // width,
                    "col": pos % width,
                    "char": [display_char(int(b)) for b in tokens],
                    "state": state,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)
