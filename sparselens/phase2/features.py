"""Head features with dask.dataframe over the capture tables: one row per (model, content_type, seq_len, layer, head).

Two sources, read lazily and computed together on the cluster:

- `query_stats` (every captured sample): per-query rows reduced per partition to sums and counts, then a Dask
  groupby-sum across partitions. Means over queries t >= 1: ``sink_mass`` (first 4 keys), ``local_mass`` (last 16
  keys), ``entropy_norm`` (entropy / ln(t + 1), 1 = uniform over the visible keys), ``max_weight``,
  ``mean_distance`` (tokens) and ``distance_frac`` (/ (t + 1)), ``k90_frac`` and ``k95_frac`` (keys for 90 / 95 %
  of the row over t + 1: the "k90 / T" of the issue, per query). DSA rows, over queries t >= k where selection is
  a real choice: ``dsa_recall`` (the layer's summed dense mass on the selected keys), ``dsa_head_recall`` (this
  head's), ``dsa_oracle_recall``, and ``dsa_needed_recall`` (share of ground-truth needed keys selected).
- `attention_topk` (the captured map samples): one Dask partition per capture file holds whole heads, so
  ``map_partitions`` rebuilds each map and measures it (`headmaps.topk_partition_features`): the CPU-heavy part,
  which is what spreads over the workers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sparselens.analysis import headmaps
from sparselens.analysis.content import RELEVANCE_KEYS, relevance_partials
from sparselens.analysis.headmaps import HEAD_KEYS
from sparselens.phase2.parallel import compute

QUERY_MEANS = (
    "sink_mass",
    "local_mass",
    "entropy_norm",
    "max_weight",
    "mean_distance",
    "distance_frac",
    "k90_frac",
    "k95_frac",
)
DSA_MEANS = ("dsa_recall", "dsa_head_recall", "dsa_oracle_recall", "dsa_needed_recall")
QUERY_COLUMNS = [
    "model",
    "content_type",
    "seq_len",
    "sample_id",
    "layer",
    "head",
    "query_pos",
    "entropy",
    "max_weight",
    "sink_mass",
    "local_mass",
    "mean_distance",
    "k90",
    "k95",
    "recall",
    "oracle_recall",
    "head_recall",
    "needed_recall",
]


def _read(path: str, columns: list[str] | None = None):
    import dask.dataframe as dd

    return dd.read_parquet(path, columns=columns, split_row_groups=False)


def _plain_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Hive partition columns arrive as categoricals; make the key columns plain str / int."""
    types = {"model": str, "content_type": str, "seq_len": "int64", "layer": "int64", "head": "int64"}
    return df.astype({k: v for k, v in types.items() if k in df.columns})


def query_partials(df: pd.DataFrame, topk: int) -> pd.DataFrame:
    """Per-head sums and counts of one query_stats partition (summed again across partitions, then divided)."""
    df = _plain_keys(df)
    df = df[df["query_pos"] >= 1]
    visible = df["query_pos"].to_numpy(np.float64) + 1  # keys a query sees
    chosen = df["query_pos"].to_numpy() >= topk  # DSA selection is a real choice
    values = {
        "sink_mass": df["sink_mass"],
        "local_mass": df["local_mass"],
        "entropy_norm": df["entropy"] / np.log(visible),
        "max_weight": df["max_weight"],
        "mean_distance": df["mean_distance"],
        "distance_frac": df["mean_distance"] / visible,
        "k90_frac": df["k90"] / visible,
        "k95_frac": df["k95"] / visible,
        "dsa_recall": df["recall"].where(chosen),
        "dsa_head_recall": df["head_recall"].where(chosen),
        "dsa_oracle_recall": df["oracle_recall"].where(chosen),
        "dsa_needed_recall": df["needed_recall"].where(chosen),
    }
    out = df[HEAD_KEYS].copy()
    for name, col in values.items():
        col = col.astype("float64")
        out[f"{name}__sum"] = col.fillna(0.0)
        out[f"{name}__n"] = col.notna().astype("int64")
    out["samples__set"] = df["sample_id"]
    grouped = out.groupby(HEAD_KEYS, sort=False)
    sums = grouped[[c for c in out.columns if c.endswith(("__sum", "__n"))]].sum()
    sums["n_queries"] = grouped.size()
    return sums.reset_index()


def _finish_query_features(sums: pd.DataFrame) -> pd.DataFrame:
    out = sums[HEAD_KEYS].copy()
    for name in (*QUERY_MEANS, *DSA_MEANS):
        n = sums[f"{name}__n"].to_numpy()
        out[name] = np.where(n > 0, sums[f"{name}__sum"].to_numpy() / np.maximum(n, 1), np.nan)
    out["n_queries"] = sums["n_queries"].astype("int64")
    return out


def _map_meta() -> pd.DataFrame:
    ints = {"seq_len", "layer", "head", "n_needed_queries"}
    strings = {"model", "content_type", "sample_id", "kind", "fit_params"}
    cols = headmaps.map_feature_columns()
    return pd.DataFrame(
        {c: pd.Series(dtype="int64" if c in ints else object if c in strings else "float64") for c in cols}
    )


def lazy_features(
    query_stats_path: str,
    attention_topk_path: str,
    topk: int,
    budget: float | int,
    max_queries: int | None,
):
    """(query partial sums, per-sample map features) as lazy Dask DataFrames over the two capture tables."""
    qs = _read(query_stats_path, columns=QUERY_COLUMNS)
    partials = qs.map_partitions(query_partials, topk, meta=query_partials(_empty_query_frame(), topk))
    sums = partials.groupby(HEAD_KEYS).sum(split_out=1)
    maps = _read(attention_topk_path).map_partitions(
        headmaps.topk_partition_features, budget, max_queries, meta=_map_meta()
    )
    return sums, maps


def _empty_query_frame() -> pd.DataFrame:
    ints = {"seq_len", "layer", "head", "query_pos", "k90", "k95"}
    strings = {"model", "content_type", "sample_id"}
    return pd.DataFrame(
        {c: pd.Series(dtype="int64" if c in ints else object if c in strings else "float64") for c in QUERY_COLUMNS}
    )


def aggregate_maps(maps: pd.DataFrame) -> pd.DataFrame:
    """Per-sample map features -> per head: numeric means over samples, the most frequent kind and the fit
    parameters of its first sample of that kind."""
    if maps.empty:
        return maps.drop(columns=["sample_id"])
    maps = _plain_keys(maps).sort_values([*HEAD_KEYS, "sample_id"])
    numeric = [c for c in maps.columns if c not in (*HEAD_KEYS, "sample_id", "kind", "fit_params")]
    grouped = maps.groupby(HEAD_KEYS, sort=True)
    out = grouped[numeric].mean()
    out["kind"] = grouped["kind"].agg(lambda s: s.value_counts().index[0])
    modal = maps.merge(out["kind"].reset_index(), on=[*HEAD_KEYS, "kind"])  # samples of the most frequent kind
    out["fit_params"] = modal.groupby(HEAD_KEYS, sort=True)["fit_params"].first()  # params of that kind's fit
    out["n_map_samples"] = grouped.size()
    return out.reset_index()


def head_features(
    store, topk: int, client, budget: float | int, max_queries: int | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(head features, per-sample map features) of a run's capture tables, computed on `client`.

    Head features: one row per (model, content_type, seq_len, layer, head) with the query_stats means and the
    map features (module docstring). topk: the DSA model's k (recall counts queries t >= k); max_queries: maps
    are measured on their last max_queries queries (headmaps).
    """
    sums, maps = lazy_features(
        store.table_source("query_stats"), store.table_source("attention_topk"), topk, budget, max_queries
    )
    sums, maps = compute(client, sums, maps)
    query = _finish_query_features(_plain_keys(sums.reset_index()))
    maps = _plain_keys(maps.reset_index(drop=True))
    if maps.empty:
        raise ValueError(
            f"attention_topk of run {store.run_id!r} holds no maps; Phase 2 classifies heads from them: rerun "
            "capture with topk_samples >= 1"
        )
    heads = query.merge(aggregate_maps(maps), on=HEAD_KEYS, how="inner", validate="one_to_one")
    heads = heads.sort_values(HEAD_KEYS).reset_index(drop=True)
    return heads, maps.sort_values([*HEAD_KEYS, "sample_id"]).reset_index(drop=True)


def lazy_relevance(selections_path: str, topk: int):
    """Lazy Dask DataFrame of relevance sums per (model, content_type, seq_len, layer) over the selections table."""
    import dask.dataframe as dd

    sel = dd.read_parquet(
        selections_path,
        columns=["model", "content_type", "seq_len", "sample_id", "layer", "query_pos", "token", "selected", "needed"],
        split_row_groups=False,
    )
    meta = relevance_partials(pd.DataFrame(), topk)
    return sel.map_partitions(relevance_partials, topk, meta=meta).groupby(RELEVANCE_KEYS).sum(split_out=1)
