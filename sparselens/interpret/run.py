"""Phase 1 over a run store: `phase1_*` tables from the capture tables, then charts, then the report section.

Reads only the capture tables (and the run's k and training length from its manifest); each step reads what the
previous one wrote, so each can be rerun alone.
"""

from __future__ import annotations

import pandas as pd

from sparselens.config import InterpretConfig
from sparselens.interpret import summaries
from sparselens.runs import run_preset
from sparselens.storage import RunStore

QUERY_COLUMNS = [
    "model",
    "content_type",
    "seq_len",
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
    "needed_recall",
]
INDEXER_COLUMNS = [
    "seq_len",
    "layer",
    "indexer_head",
    "query_pos",
    "weight",
    "score_mean",
    "score_max",
    "score_q50",
    "score_q90",
    "score_q99",
    "active_frac",
    "keys_50",
    "keys_90",
    "keys_99",
    "main_head_corr",
]


def _write(store: RunStore, name: str, df: pd.DataFrame) -> int:
    store.write_table(name, df.assign(run_id=store.run_id))
    return len(df)


def _histograms(qs: pd.DataFrame, ix: pd.DataFrame, bins: int) -> pd.DataFrame:
    entropy = summaries.histogram(qs, "entropy", ["model", "seq_len", "layer", "head"], bins)
    heads = ix[ix["indexer_head"] >= 0].rename(columns={"indexer_head": "head"}).assign(model="dsa")
    parts = [entropy]
    for column in ("weight", "score_q90", "active_frac"):
        parts.append(
            summaries.histogram(
                heads, column, ["model", "seq_len", "layer", "head"], bins, quantity=f"indexer_{column}"
            )
        )
    return pd.concat(parts, ignore_index=True)


def write_phase1_tables(store: RunStore, cfg: InterpretConfig) -> dict[str, int]:
    """Compute and write every `phase1_*` summary table; return their row counts."""
    k = run_preset(store).model.topk
    qs = store.read_table("query_stats", columns=QUERY_COLUMNS)
    ix = store.read_table("indexer_stats", columns=INDEXER_COLUMNS)
    scaling = summaries.scaling_summary(qs, k)
    counts = {
        "phase1_entropy": _write(store, "phase1_entropy", summaries.entropy_summary(qs)),
        "phase1_scaling": _write(store, "phase1_scaling", scaling),
        "phase1_recall_length": _write(
            store, "phase1_recall_length", summaries.recall_length(scaling, cfg.recall_threshold)
        ),
        "phase1_histograms": _write(store, "phase1_histograms", _histograms(qs, ix, cfg.hist_bins)),
    }
    del qs
    counts["phase1_indexer_heads"] = _write(store, "phase1_indexer_heads", summaries.indexer_head_summary(ix))
    counts["phase1_indexer_corr"] = _write(store, "phase1_indexer_corr", summaries.indexer_corr(ix))
    counts["phase1_indexer_mass"] = _write(
        store, "phase1_indexer_mass", summaries.indexer_mass_curve(ix, cfg.position_bins)
    )
    return counts


def reference_length(lengths: list[int], train_len: int) -> int:
    """The captured length closest to the training length (the in-distribution view)."""
    return min(lengths, key=lambda t: (abs(t - train_len), t))


def key_numbers(store: RunStore) -> pd.DataFrame:
    """One row per layer: recall at the training length and the longest length, where recall drops below the
    threshold, dense keys for 90% of mass, ground-truth recall, and entropy (dense vs DSA), pooled over content."""
    preset = run_preset(store)
    scaling = store.read_table("phase1_scaling")
    cross = store.read_table("phase1_recall_length")
    pooled = scaling[scaling["content_type"] == summaries.ALL]
    lengths = sorted(pooled["seq_len"].unique().tolist())
    t_ref, t_max = reference_length(lengths, preset.train.seq_len), lengths[-1]

    def at(model: str, t: int, column: str) -> pd.Series:
        rows = pooled[(pooled["model"] == model) & (pooled["seq_len"] == t)]
        return rows.set_index("layer")[column]

    table = pd.DataFrame(
        {
            f"recall@{t_ref}": at("dsa", t_ref, "recall_mean"),
            f"recall@{t_max}": at("dsa", t_max, "recall_mean"),
            f"oracle@{t_max}": at("dsa", t_max, "oracle_recall_mean"),
            f"needed_recall@{t_ref}": at("dsa", t_ref, "needed_recall_mean"),
            f"dense_k90@{t_ref}": at("dense", t_ref, "k90_mean"),
            f"dense_k90@{t_max}": at("dense", t_max, "k90_mean"),
            f"entropy_dense@{t_ref}": at("dense", t_ref, "entropy_mean"),
            f"entropy_dsa@{t_ref}": at("dsa", t_ref, "entropy_mean"),
        }
    )
    lengths_below = cross[cross["content_type"] == summaries.ALL].set_index("layer")["status"]
    table["recall_vs_length"] = lengths_below
    return table.reset_index()
