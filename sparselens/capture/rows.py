"""Arrow tables of one chunk of samples at one layer, in the declared capture schemas (no I/O).

Files hold every column but the hive partition columns (model, seq_len, layer), which live in the directory
names. Rows are ordered by sample, then head, then query position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from sparselens.storage.schemas import CAPTURE_PARTITIONS, SCHEMAS


@dataclass(frozen=True)
class ChunkMeta:
    """Who the rows of one chunk belong to: B samples of one length, captured from one model."""

    run_id: str
    model: str
    seq_len: int
    sample_ids: tuple[str, ...]  # B
    content_types: tuple[str, ...]  # B


def file_schema(name: str) -> pa.Schema:
    """The declared schema of capture table `name` without its partition columns (what one file stores)."""
    schema = SCHEMAS[name]
    return pa.schema([f for f in schema if f.name not in CAPTURE_PARTITIONS])


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().contiguous().numpy().reshape(-1)


def _build(name: str, columns: dict[str, object]) -> pa.Table:
    schema = file_schema(name)
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise ValueError(f"capture table {name!r}: columns {missing} were not computed")
    arrays = []
    for fld in schema:
        col = columns[fld.name]
        arr = col if isinstance(col, pa.Array) else pa.array(col, from_pandas=True)
        arrays.append(arr.cast(fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _key_columns(meta: ChunkMeta, per_sample: int) -> dict[str, object]:
    """run_id, content_type, sample_id for B samples, each repeated `per_sample` times."""
    b = len(meta.sample_ids)
    return {
        "run_id": pa.array([meta.run_id] * (b * per_sample), pa.string()),
        "content_type": np.repeat(np.array(meta.content_types, dtype=object), per_sample),
        "sample_id": np.repeat(np.array(meta.sample_ids, dtype=object), per_sample),
    }


def _grid(b: int, h: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(head, query_pos) int32 columns for rows ordered by (sample, head, query)."""
    heads = np.tile(np.repeat(np.arange(h, dtype=np.int32), t), b)
    queries = np.tile(np.arange(t, dtype=np.int32), b * h)
    return heads, queries


def list_array(values: np.ndarray, keep: np.ndarray, type_: pa.DataType, null_rows: np.ndarray | None = None):
    """Variable-length lists from a padded [N, m] array and a bool mask [N, m] of the entries to keep."""
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(keep.sum(1), out=offsets[1:])
    flat = pa.array(values[keep], type=type_)
    mask = None if null_rows is None else pa.array(null_rows, pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat, mask=mask)


def query_stats_table(meta: ChunkMeta, stats: dict[str, torch.Tensor], b: int, h: int, t: int) -> pa.Table:
    """stats: attention_row_stats [B, H, T] entries, plus for DSA selection_stats ([B, T] ones broadcast to heads)."""
    heads, queries = _grid(b, h, t)
    cols = {**_key_columns(meta, h * t), "head": heads, "query_pos": queries}
    for name in ("entropy", "max_weight", "sink_mass", "local_mass", "mean_distance", "k90", "k95", "head_recall"):
        cols[name] = _np(stats[name]) if name in stats else pa.nulls(b * h * t)
    for name in ("recall", "oracle_recall", "needed_recall", "n_needed"):
        per_query = stats.get(name)  # [B, T]
        cols[name] = _np(per_query.unsqueeze(1).expand(b, h, t)) if per_query is not None else pa.nulls(b * h * t)
    return _build("query_stats", cols)


def attention_topk_table(meta: ChunkMeta, pattern: torch.Tensor, m: int) -> pa.Table:
    """pattern [B, H, T, S] of the topk samples -> top-m keys and weights (weights > 0 only) per row."""
    b, h, t, s = pattern.shape
    values, keys = pattern.topk(min(m, s), dim=-1)  # [B, H, T, m], descending weight
    values = values.reshape(b * h * t, -1).cpu().numpy()
    keys = keys.reshape(b * h * t, -1).cpu().numpy()
    keep = values > 0
    heads, queries = _grid(b, h, t)
    cols = {
        **_key_columns(meta, h * t),
        "head": heads,
        "query_pos": queries,
        "keys": list_array(keys, keep, pa.int32()),
        "weights": list_array(values, keep, pa.float32()),
        "mass": np.where(keep, values, 0).sum(1),
    }
    return _build("attention_topk", cols)


def indexer_stats_table(meta: ChunkMeta, stats: dict[str, torch.Tensor], weights: torch.Tensor) -> pa.Table:
    """stats: indexer_row_stats over rows [I, head 0, .., head HI-1] ([B, J, T], corr [B, J, T, H]);
    weights [B, T, HI]."""
    b, j, t = stats["score_mean"].shape
    heads, queries = _grid(b, j, t)
    heads = heads - 1  # row 0 is the combined score I, indexer_head -1
    w = torch.cat([torch.full_like(weights[..., :1], float("nan")), weights], dim=-1)  # [B, T, J]
    corr = stats["main_head_corr"].reshape(b * j * t, -1).cpu().numpy()  # [N, H]
    cols = {
        **_key_columns(meta, j * t),
        "indexer_head": heads,
        "query_pos": queries,
        "weight": _np(w.permute(0, 2, 1)),
        "main_head_corr": list_array(corr, np.ones_like(corr, dtype=bool), pa.float32()),
    }
    for name in ("score_mean", "score_max", "score_q50", "score_q90", "score_q99", "active_frac"):
        cols[name] = _np(stats[name])
    for name in ("keys_50", "keys_90", "keys_99"):
        cols[name] = _np(stats[name])
    return _build("indexer_stats", cols)


def selections_table(
    meta: ChunkMeta, tokens: torch.Tensor, idx: torch.Tensor, needed: list[list[np.ndarray] | None]
) -> pa.Table:
    """tokens [B, T] inputs, idx [B, T, k] (-1 = none, ascending), needed: per sample T arrays or None."""
    b, t, k = idx.shape
    flat_idx = idx.reshape(b * t, k).cpu().numpy()
    keep = flat_idx >= 0
    rows_needed = [r for rows in needed for r in (rows[:t] if rows is not None else [np.zeros(0, np.int32)] * t)]
    lengths = np.array([len(r) for r in rows_needed], dtype=np.int32)
    offsets = np.zeros(b * t + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(rows_needed).astype(np.int32) if lengths.sum() else np.zeros(0, np.int32)
    is_null = np.repeat(np.array([rows is None for rows in needed]), t)
    needed_arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()), mask=pa.array(is_null))
    cols = {
        **_key_columns(meta, t),
        "query_pos": np.tile(np.arange(t, dtype=np.int32), b),
        "token": _np(tokens).astype(np.int16),
        "selected": list_array(flat_idx, keep, pa.int32()),
        "needed": needed_arr,
        "n_selected": keep.sum(1).astype(np.int32),
    }
    return _build("selections", cols)
