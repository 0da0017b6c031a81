"""Content mapping: which kinds each content type brings out, how stable a head's kind is, and what DSA selects.

- :func:`kind_distribution`: per (model, seq_len, content_type, kind) the share of heads and their mean coverage
  (content_type ``all`` pools the content types).
- :func:`kind_stability`: per head (model, seq_len, layer, head) its kind under each content type, the modal kind
  and ``stability`` = share of content types giving the modal kind (1 = one kind everywhere).
- :func:`ground_truth_heads`: on the synthetic tasks, how much each head attends to the ground-truth needed keys
  (``needed_mass``), how often its heaviest key is one (``needed_argmax``), and ``lift`` over a uniform row.
- Selection relevance (:func:`relevance_partials` per partition of the `selections` table, summed, then
  :func:`finish_relevance`): for DSA queries
  t >= k, the share of selected keys that are ground-truth needed (synthetic types), that hold the same byte as
  the query (the duplicate-token template), and that follow an earlier copy of the query's byte (the induction
  template: key s with token[s - 1] == token[t]); each beside its chance level, the share of all visible keys
  with that property (what a uniformly random selection would get).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sparselens.analysis.headmaps import HEAD_KEYS
from sparselens.data.dataset import CONTENT_TYPES
from sparselens.masks import causal_mask_np

SYNTHETIC = tuple(ct for ct in CONTENT_TYPES if ct not in ("code", "prose"))
RELEVANCE_KEYS = ["model", "content_type", "seq_len", "layer"]
RELEVANCE = ("needed", "same_byte", "induction")


def kind_distribution(heads: pd.DataFrame) -> pd.DataFrame:
    """Share of heads of each kind and their mean coverage, per (model, seq_len, content_type) and pooled."""
    pooled = heads.assign(content_type="all")
    both = pd.concat([heads, pooled], ignore_index=True)
    keys = ["model", "seq_len", "content_type"]
    g = both.groupby([*keys, "kind"], sort=True)
    out = g.agg(
        n_heads=("head", "size"),
        coverage=("coverage", "mean"),
        fit_density=("fit_density", "mean"),
        oracle_coverage=("oracle_coverage", "mean"),
    ).reset_index()
    out["share"] = out["n_heads"] / out.groupby(keys)["n_heads"].transform("sum")
    return out


def kind_stability(heads: pd.DataFrame) -> pd.DataFrame:
    """Per head and length: the kind under each content type (``kinds``, 'ct:kind|...'), modal kind, stability."""
    rows = []
    for (model, t, layer, head), g in heads.groupby(["model", "seq_len", "layer", "head"], sort=True):
        counts = g["kind"].value_counts()
        modal = str(sorted(counts[counts == counts.max()].index)[0])
        rows.append(
            {
                "model": model,
                "seq_len": int(t),
                "layer": int(layer),
                "head": int(head),
                "modal_kind": modal,
                "stability": float(counts.max() / len(g)),
                "n_kinds": int(len(counts)),
                "n_content_types": int(len(g)),
                "kinds": "|".join(f"{c}:{k}" for c, k in zip(g["content_type"], g["kind"], strict=True)),
            }
        )
    return pd.DataFrame(rows)


def ground_truth_heads(heads: pd.DataFrame) -> pd.DataFrame:
    """Synthetic-task rows of the head features with needed_mass, needed_argmax, chance, lift, and the rank of the
    head within its (model, content_type, seq_len) by needed_mass (1 = the task's strongest head)."""
    cols = [
        *HEAD_KEYS,
        "kind",
        "coverage",
        "needed_mass",
        "needed_argmax",
        "needed_chance",
        "n_needed_queries",
        "dsa_needed_recall",
    ]
    gt = heads[heads["content_type"].isin(SYNTHETIC)][cols].copy()
    gt["lift"] = gt["needed_mass"] / gt["needed_chance"]
    gt["rank"] = gt.groupby(["model", "content_type", "seq_len"])["needed_mass"].rank(ascending=False, method="first")
    gt["rank"] = gt["rank"].fillna(0).astype("int64")
    return gt.sort_values([*HEAD_KEYS[:3], "rank"]).reset_index(drop=True)


def _scatter(query_pos: pd.Series, lists: pd.Series | None, t: int) -> np.ndarray:
    """bool [T, T] with True at (query, key) for every key in each query's list (None rows are empty)."""
    out = np.zeros((t, t), dtype=bool)
    if lists is None:
        return out
    keys = [np.asarray(k, dtype=np.int64) if k is not None else np.zeros(0, np.int64) for k in lists]
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    if lengths.sum():
        out[np.repeat(query_pos.to_numpy(np.int64), lengths), np.concatenate(keys)] = True
    return out


def _sample_relevance(g: pd.DataFrame, topk: int) -> dict[str, float]:
    """Sums over queries t >= topk of one (sample, layer): selected-key shares and their chance levels."""
    g = g.sort_values("query_pos")
    t = len(g)
    tokens = g["token"].to_numpy(np.int64)  # [T] byte at each position
    same = tokens[:, None] == tokens[None, :]  # [T, T] key s holds the query's byte
    follow = np.zeros_like(same)
    follow[:, 1:] = same[:, :-1]  # key s follows an earlier copy of the query's byte (induction target)
    causal = causal_mask_np(t, t)  # [T, T]
    same &= causal & ~np.eye(t, dtype=bool)  # earlier copies only: the query's own key is not a duplicate token
    follow &= causal
    has_truth = g["needed"].notna().any()
    truth = _scatter(g["query_pos"], g["needed"] if has_truth else None, t)  # [T, T] ground-truth needed keys
    chosen = _scatter(g["query_pos"], g["selected"], t)  # [T, T] selected keys
    rows = np.arange(t) >= topk  # queries where the indexer really chooses
    n_sel = chosen[rows].sum(1)  # [R]
    visible = np.arange(t)[rows] + 1.0
    out = {"n_queries": int(rows.sum())}
    for name, prop in (("needed", truth), ("same_byte", same), ("induction", follow)):
        if name == "needed" and not has_truth:
            out |= {"needed__share": 0.0, "needed__chance": 0.0, "needed__n": 0}
            continue
        hits = (chosen & prop)[rows].sum(1)  # [R]
        out[f"{name}__share"] = float((hits / np.maximum(n_sel, 1)).sum())
        out[f"{name}__chance"] = float((prop[rows].sum(1) / visible).sum())
        out[f"{name}__n"] = int(rows.sum())
    return out


def relevance_partials(df: pd.DataFrame, topk: int) -> pd.DataFrame:
    """Sums of one selections partition per (model, content_type, seq_len, layer) (summed across partitions)."""
    cols = [*RELEVANCE_KEYS, "n_queries"] + [f"{n}__{s}" for n in RELEVANCE for s in ("share", "chance", "n")]
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("model", "content_type") else "float64") for c in cols})
    df = df.astype({"model": str, "content_type": str, "seq_len": "int64", "layer": "int64"})
    rows = []
    for (model, ct, t, layer, _), g in df.groupby([*RELEVANCE_KEYS, "sample_id"], sort=False):
        rows.append({"model": model, "content_type": ct, "seq_len": t, "layer": layer} | _sample_relevance(g, topk))
    out = pd.DataFrame(rows, columns=cols)
    return out.astype({c: "float64" for c in cols[4:]})


def finish_relevance(sums: pd.DataFrame) -> pd.DataFrame:
    """Relevance sums -> mean shares per (model, content_type, seq_len, layer); NaN where not applicable."""
    sums = sums.reset_index()
    out = sums[RELEVANCE_KEYS].copy().astype({"seq_len": "int64", "layer": "int64"})
    out["n_queries"] = sums["n_queries"].astype("int64")
    for name in RELEVANCE:
        n = sums[f"{name}__n"].to_numpy()
        for stat in ("share", "chance"):
            out[f"{name}_{stat}"] = np.where(n > 0, sums[f"{name}__{stat}"] / np.maximum(n, 1), np.nan)
    return out.sort_values(RELEVANCE_KEYS).reset_index(drop=True)
