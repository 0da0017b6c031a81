"""Cluster heads by their features (scikit-learn) and compare the clusters with the pattern kinds.

A point is one head in one context (model, content_type, seq_len, layer, head) from `phase2_head_features`.
Features are standardised (zero mean, unit variance; constant columns become 0). Two methods:

- ``kmeans``: KMeans for every k in 2..min(max_k, n - 1), keeping the k with the highest silhouette (ties: the
  smaller k); 10 restarts, fixed seed.
- ``hdbscan``: density-based, no k to choose; a cluster needs ``min_cluster_size`` points and at least 5 % of
  them (so pooling hundreds of heads does not shatter into dozens of tiny clusters); the rest is noise (-1).

Each (model, content_type, seq_len) group is clustered alone (`sparselens.phase2` runs one Dask task each), and
each model's heads over all contexts together (``scope = "model"``), which is where the 2-D projection (PCA of the
standardised features) comes from. Agreement with the kinds is the adjusted Rand index (1 = the same partition,
0 = chance).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from sparselens.analysis.headmaps import HEAD_KEYS

FEATURES = (
    "sink_mass",
    "local_mass",
    "entropy_norm",
    "max_weight",
    "distance_frac",
    "k90_frac",
    "local_w1",
    "local_w4",
    "local_w16",
    "local_w64",
    "vertical_conc",
    "slash_conc",
    "block_conc",
    "dec_sink",
    "dec_local",
    "dec_vertical",
    "dec_slash",
    "dec_block",
    "dec_residual",
    "coverage",
    "oracle_coverage",
)
POINT_KEYS = HEAD_KEYS
SEED = 0


def standardise(df: pd.DataFrame, features: tuple[str, ...] = FEATURES) -> np.ndarray:
    """[N, F] standardised feature matrix (NaN -> the column mean, i.e. 0 after scaling)."""
    x = df[list(features)].to_numpy(np.float64)  # [N, F]
    means = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0) if len(x) else np.zeros(x.shape[1])
    x = np.where(np.isfinite(x), x, np.nan_to_num(means)[None, :])
    return StandardScaler().fit_transform(x) if len(x) else x


def kmeans_by_silhouette(x: np.ndarray, max_k: int = 8) -> tuple[np.ndarray, int, float]:
    """KMeans labels [N] with k chosen by silhouette, the k, and its silhouette (NaN when n < 3: one cluster)."""
    n = len(x)
    best = (np.zeros(n, dtype=np.int64), 1, float("nan"))
    distinct = len(np.unique(np.round(x, 12), axis=0)) if n else 0
    for k in range(2, min(max_k, n - 1, distinct) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=SEED).fit_predict(x)
        if len(np.unique(labels)) < 2:
            continue
        score = float(silhouette_score(x, labels))
        if not best[2] >= score:  # NaN (nothing yet) or a strictly better k
            best = (labels.astype(np.int64), k, score)
    return best


def density_clusters(x: np.ndarray, min_cluster_size: int = 3) -> np.ndarray:
    """HDBSCAN labels [N] (-1 = noise); all noise when there are too few points."""
    if len(x) <= min_cluster_size:
        return np.full(len(x), -1, dtype=np.int64)
    return HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(x).astype(np.int64)


def projection(x: np.ndarray) -> np.ndarray:
    """[N, 2] PCA projection of standardised features (zeros when there is nothing to project)."""
    if len(x) < 2 or x.shape[1] < 2:
        return np.zeros((len(x), 2))
    out = PCA(n_components=2, random_state=SEED).fit_transform(x)
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def cluster_points(
    df: pd.DataFrame, scope: str, max_k: int = 8, min_cluster_size: int = 3
) -> tuple[pd.DataFrame, dict]:
    """Cluster one set of points; returns (per-point labels and projection, summary with k, silhouette, ARIs)."""
    x = standardise(df)
    labels, k, silhouette = kmeans_by_silhouette(x, max_k)
    dens = density_clusters(x, max(min_cluster_size, len(df) // 20))  # a cluster is >= 5 % of the points
    xy = projection(x)
    points = df[POINT_KEYS + ["kind"]].copy()
    points["scope"] = scope
    points["kmeans"] = labels
    points["hdbscan"] = dens
    points["x"], points["y"] = xy[:, 0], xy[:, 1]
    kinds = df["kind"].to_numpy()
    summary = {
        "scope": scope,
        "n_points": len(df),
        "n_kinds": int(len(set(kinds))),
        "kmeans_k": int(k),
        "silhouette": silhouette,
        "ari_kmeans": float(adjusted_rand_score(kinds, labels)) if len(df) else float("nan"),
        "hdbscan_clusters": int(len(set(dens) - {-1})),
        "hdbscan_noise": float((dens == -1).mean()) if len(df) else float("nan"),
        "ari_hdbscan": float(adjusted_rand_score(kinds, dens)) if len(df) else float("nan"),
    }
    return points, summary


def cluster_item(item: tuple[dict, pd.DataFrame], max_k: int = 8, min_cluster_size: int = 3) -> tuple:
    """(points, summary row) of one item of `cluster_items`."""
    keys, df = item
    points, summary = cluster_points(df, keys["scope"], max_k, min_cluster_size)
    return points, keys | summary


def cluster_items(heads: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """What to cluster: every (model, content_type, seq_len) group, then every model's points over all contexts.

    heads: phase2_head_features rows. Each item is (keys: model, content_type, seq_len ('all' / -1 for model
    scope), scope; its rows); `cluster_item` clusters one, so a caller can spread them over workers.
    """
    items = []
    for (model, ct, t), g in heads.groupby(["model", "content_type", "seq_len"], sort=True):
        items.append(
            ({"model": model, "content_type": ct, "seq_len": int(t), "scope": "group"}, g.reset_index(drop=True))
        )
    for model, g in heads.groupby("model", sort=True):
        items.append(
            ({"model": model, "content_type": "all", "seq_len": -1, "scope": "model"}, g.reset_index(drop=True))
        )
    return items


def combine_clusters(results: list[tuple[pd.DataFrame, dict]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`cluster_item` results -> (points: one row per head and scope, summary: one row per clustered item)."""
    points = pd.concat([p for p, _ in results], ignore_index=True)
    return points, pd.DataFrame([s for _, s in results])


def cluster_heads(heads: pd.DataFrame, max_k: int = 8, min_cluster_size: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster every item of `cluster_items` in this process; see `combine_clusters` for the result."""
    return combine_clusters([cluster_item(item, max_k, min_cluster_size) for item in cluster_items(heads)])
