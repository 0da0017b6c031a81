"""Phase 1 summary tables computed from the capture tables (pandas only, no plotting, no I/O).

Every function takes capture rows as a DataFrame and returns one `phase1_*` table (schemas in
storage/schemas.py) without `run_id`, which the caller adds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

ALL = "all"  # content_type of rows pooled over content types


def _q(p: float):
    def quantile(x: pd.Series) -> float:
        return float(np.nanquantile(x.to_numpy(dtype=float), p)) if x.notna().any() else float("nan")

    quantile.__name__ = f"p{round(p * 100)}"
    return quantile


def entropy_summary(qs: pd.DataFrame) -> pd.DataFrame:
    """Per (model, seq_len, layer, head): entropy quantiles and the mean of every other row statistic."""
    keys = ["model", "seq_len", "layer", "head"]
    g = qs.groupby(keys, observed=True, sort=True)
    out = g.agg(
        n_queries=("entropy", "size"),
        entropy_mean=("entropy", "mean"),
        entropy_p10=("entropy", _q(0.1)),
        entropy_p50=("entropy", _q(0.5)),
        entropy_p90=("entropy", _q(0.9)),
        max_weight_mean=("max_weight", "mean"),
        sink_mass_mean=("sink_mass", "mean"),
        local_mass_mean=("local_mass", "mean"),
        mean_distance_mean=("mean_distance", "mean"),
        k90_mean=("k90", "mean"),
    )
    return out.reset_index()


def histogram(df: pd.DataFrame, value: str, keys: list[str], bins: int, quantity: str | None = None) -> pd.DataFrame:
    """Fraction of rows per bin of `value` within each `keys` group; one shared bin grid over all groups.

    Returns keys + [quantity, bin_lo, bin_hi, fraction]; `quantity` defaults to the column name.
    """
    values = df[value].to_numpy(dtype=float)
    finite = np.isfinite(values)
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    frame = df[keys].copy()
    frame["bin"] = which
    frame = frame[finite]
    counts = frame.groupby([*keys, "bin"], observed=True).size().rename("count").reset_index()
    counts["fraction"] = counts["count"] / counts.groupby(keys, observed=True)["count"].transform("sum")
    counts["bin_lo"], counts["bin_hi"] = edges[counts["bin"]], edges[counts["bin"] + 1]
    counts["quantity"] = quantity or value
    return counts[[*keys, "quantity", "bin_lo", "bin_hi", "fraction"]]


def scaling_summary(qs: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per (model, content_type incl. 'all', seq_len, layer): mean entropy over all queries; k90, k95 and
    recall / oracle / needed recall over queries t >= k (where selection is a real choice, so k90 compares with
    the budget k; recall on DSA rows only)."""
    pooled = qs.assign(content_type=ALL)
    frame = pd.concat([qs, pooled], ignore_index=True)
    keys = ["model", "content_type", "seq_len", "layer"]
    base = frame.groupby(keys, observed=True).agg(
        n_queries=("entropy", "size"),
        entropy_mean=("entropy", "mean"),
    )
    late = frame[frame["query_pos"] >= k]
    rec = late.groupby(keys, observed=True).agg(
        k90_mean=("k90", "mean"),
        k95_mean=("k95", "mean"),
        recall_mean=("recall", "mean"),
        recall_p10=("recall", _q(0.1)),
        oracle_recall_mean=("oracle_recall", "mean"),
        needed_recall_mean=("needed_recall", "mean"),
    )
    return base.join(rec, how="left").reset_index()


def recall_length(scaling: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per (content_type, layer) of the DSA rows: the first captured length whose mean recall is below
    `threshold`, and the crossing interpolated linearly in log2(length) (null when never crossed in range)."""
    rows = []
    dsa = scaling[scaling["recall_mean"].notna()]
    for (ct, layer), g in dsa.groupby(["content_type", "layer"], observed=True, sort=True):
        g = g.sort_values("seq_len")
        lens, rec = g["seq_len"].to_numpy(), g["recall_mean"].to_numpy(dtype=float)
        below = np.flatnonzero(rec < threshold)
        first = int(lens[below[0]]) if below.size else None
        crossing = None
        if below.size and below[0] > 0:
            i = below[0]
            x0, x1, y0, y1 = math.log2(lens[i - 1]), math.log2(lens[i]), rec[i - 1], rec[i]
            crossing = 2 ** (x0 + (y0 - threshold) / (y0 - y1) * (x1 - x0))
        if first is None:
            status = f"recall >= {threshold} at every captured length (up to {int(lens[-1])})"
        elif crossing is None:
            status = f"recall < {threshold} already at the shortest captured length {int(lens[0])}"
        else:
            status = f"recall falls below {threshold} near length {crossing:.0f}"
        rows.append(
            {
                "content_type": ct,
                "layer": int(layer),
                "threshold": threshold,
                "first_below": first,
                "crossing_len": crossing,
                "recall_min_len": float(rec[0]),
                "recall_max_len": float(rec[-1]),
                "status": status,
            }
        )
    return pd.DataFrame(rows)


def indexer_head_summary(ix: pd.DataFrame) -> pd.DataFrame:
    """Per (seq_len, layer, indexer_head): typical score quantiles, ReLU activity, weight distribution, and the
    keys needed for 50/90/99% of the softmax mass (means over queries)."""
    keys = ["seq_len", "layer", "indexer_head"]
    g = ix.groupby(keys, observed=True, sort=True)
    out = g.agg(
        n_queries=("score_mean", "size"),
        score_mean=("score_mean", "mean"),
        score_q50_med=("score_q50", "median"),
        score_q90_med=("score_q90", "median"),
        score_q99_med=("score_q99", "median"),
        score_max_med=("score_max", "median"),
        active_frac_mean=("active_frac", "mean"),
        weight_mean=("weight", "mean"),
        weight_std=("weight", "std"),
        weight_p10=("weight", _q(0.1)),
        weight_p90=("weight", _q(0.9)),
        weight_pos_frac=("weight", lambda w: float((w > 0).mean()) if w.notna().any() else float("nan")),
        keys_50_mean=("keys_50", "mean"),
        keys_90_mean=("keys_90", "mean"),
        keys_99_mean=("keys_99", "mean"),
    )
    return out.reset_index()


def indexer_corr(ix: pd.DataFrame) -> pd.DataFrame:
    """Per (seq_len, layer, indexer_head, head): mean over queries of the Pearson correlation between the
    indexer score row and main head `head`'s dense attention row (queries where it is defined)."""
    corr = np.stack(ix["main_head_corr"].to_numpy())  # [N, H]
    heads = corr.shape[1]
    frame = ix[["seq_len", "layer", "indexer_head"]].loc[ix.index.repeat(heads)].reset_index(drop=True)
    frame["head"] = np.tile(np.arange(heads, dtype=np.int32), len(ix))
    frame["corr"] = corr.reshape(-1)
    keys = ["seq_len", "layer", "indexer_head", "head"]
    out = frame.groupby(keys, observed=True).agg(corr_mean=("corr", "mean"), n_queries=("corr", "count"))
    return out.reset_index()


def indexer_mass_curve(ix: pd.DataFrame, position_bins: int) -> pd.DataFrame:
    """Per (seq_len, layer, indexer_head, query-position bin): mean keys holding 50/90/99% of softmax mass."""
    width = np.maximum(1, np.ceil(ix["seq_len"].to_numpy() / position_bins)).astype(np.int64)
    frame = ix[["seq_len", "layer", "indexer_head", "keys_50", "keys_90", "keys_99"]].copy()
    frame["pos_lo"] = (ix["query_pos"].to_numpy() // width * width).astype(np.int32)
    keys = ["seq_len", "layer", "indexer_head", "pos_lo"]
    out = frame.groupby(keys, observed=True).agg(
        keys_50=("keys_50", "mean"), keys_90=("keys_90", "mean"), keys_99=("keys_99", "mean")
    )
    return out.reset_index()
