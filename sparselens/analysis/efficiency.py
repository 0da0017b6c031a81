"""What each pattern keeps against what it costs: recall-density curves, AUC, regret against the oracle, FLOPs.

For one head's map ``attn[T, T]`` (dense softmax attention: the dense model's pattern, or what a DSA head's
dense attention would have been) every method is a set of (density, recall) points, recall as in
reference/patterns.md (mean over queries of the mass a mask keeps), density over the causal area:

- each static family (``sink, local, sink_local, vertical_slash, block``): its Pareto front
  (:func:`sparselens.analysis.pattern_curve`);
- ``topk_per_query``: every query keeps its own k heaviest keys, k = 1..T (the ``scattered`` family);
- ``indexer``: every query keeps the k keys with the highest indexer score I(t, s), k = 1..T (DSA only);
- ``oracle``: the n heaviest entries of the whole map, the exact upper bound on the recall of any mask with n
  entries (recall is linear in the mask), so at every density no method beats it.

A method's recall at density d is the best recall among its points with density <= d (a step function; 0 below
its cheapest point). ``auc`` is its mean over a uniform grid of densities in (0, d_max]; ``regret_d`` is
oracle(d) - method(d) at the given densities, and ``regret_fit`` the same at the density of the method's
classify-style fit (``fit_pattern`` at the budget), where the method's own point is compared with the oracle
at exactly that density.

FLOPs per query (analytic, multiply-adds counted as 2): attention over n keys with head dim D costs 4 n D (q.k
and the weighted sum of values). The indexer scores every visible key for all heads at once: per query
2 HI DI n (q.k per indexer head) + 3 HI n (ReLU, weight, sum) + n (top-k selection, one comparison per key) +
2 d (HI DI + DI + HI) (its projections); per attention head that is shared by H heads. Per-query top-k and the
oracle first need every score q.k (2 n D) and then attend to their k keys (4 k D).
"""

from __future__ import annotations

import numpy as np

from sparselens.analysis.patterns import BUDGET, STATIC_KINDS, fit_pattern, pattern_curve, prepare_head

METHODS = (*STATIC_KINDS, "topk_per_query", "indexer", "oracle")
REGRET_DENSITIES = (1 / 16, 1 / 8, 1 / 4)


def causal_area(n_queries: int, n_keys: int) -> float:
    """Number of (query, key) pairs a causal map allows, query t at key K - Q + t."""
    return float((n_keys - n_queries) * n_queries + n_queries * (n_queries + 1) / 2)


def oracle_curve(attn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact oracle front of ``attn[Q, K]``: density[N] and recall[N] after keeping the n = 1..N heaviest entries."""
    head = prepare_head(attn)
    q, k = head.a.shape
    entries = np.sort(head.a[head.offset >= 0])[::-1]  # [area] causal entries, heaviest first
    n = np.arange(1, len(entries) + 1)
    return n / causal_area(q, k), np.cumsum(entries) / q


def ranked_curve(attn: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and density when every query keeps its top-k keys by ``scores[Q, K]`` (-inf = not allowed), k=1..K.

    Returns density[K], recall[K]. With ``scores = attn`` this is the per-query oracle (``topk_per_query``).
    """
    head = prepare_head(attn)
    q, k = head.a.shape
    causal = head.offset >= 0
    s = np.where(causal, np.asarray(scores, dtype=np.float64), -np.inf)  # [Q, K]
    order = np.argsort(-s, axis=1, kind="stable")  # [Q, K] keys by descending score, future keys last
    recall = np.cumsum(np.take_along_axis(head.a, order, axis=1), axis=1).mean(0)  # [K]
    kept = np.minimum(np.arange(1, k + 1)[:, None], (head.pos + 1)[None, :]).sum(1)  # [K] entries kept
    return kept / causal_area(q, k), recall


def step_recall(density: np.ndarray, recall: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Best recall among points with density <= each value of ``at`` (0 where no point is that cheap)."""
    order = np.argsort(density, kind="stable")
    d, best = np.asarray(density)[order], np.maximum.accumulate(np.asarray(recall)[order])
    i = np.searchsorted(d, np.asarray(at) + 1e-12, side="right")  # points with density <= at
    return np.where(i > 0, best[np.maximum(i - 1, 0)], 0.0)


def head_curves(attn: np.ndarray, indexer_scores: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every method's (density, recall) points on ``attn[Q, K]``; ``indexer`` only when scores are given."""
    head = prepare_head(attn)
    curves = {kind: pattern_curve(head, kind) for kind in STATIC_KINDS}
    curves["topk_per_query"] = ranked_curve(head, head.a)
    if indexer_scores is not None:
        curves["indexer"] = ranked_curve(head, indexer_scores)
    curves["oracle"] = oracle_curve(head)
    return curves


def density_grid(n: int = 40, n_keys: int = 256) -> np.ndarray:
    """``n`` log-spaced densities from about one key per query (1 / n_keys) to 1."""
    return np.geomspace(1.0 / n_keys, 1.0, n)


def curve_metrics(
    curves: dict, d_max: float = 0.5, n_grid: int = 200, densities: tuple[float, ...] = REGRET_DENSITIES
) -> dict[str, dict[str, float]]:
    """Per method: auc over (0, d_max], its oracle-normalised value, and regret at each of ``densities``."""
    grid = np.linspace(d_max / n_grid, d_max, n_grid)
    oracle = step_recall(*curves["oracle"], grid)
    oracle_at = step_recall(*curves["oracle"], np.asarray(densities))
    out = {}
    for method, (d, r) in curves.items():
        values = step_recall(d, r, grid)
        at = step_recall(d, r, np.asarray(densities))
        row = {"auc": float(values.mean()), "auc_vs_oracle": float(values.mean() / max(oracle.mean(), 1e-12))}
        row |= {f"regret_{_tag(x)}": float(o - a) for x, o, a in zip(densities, oracle_at, at, strict=True)}
        out[method] = row
    return out


def _tag(density: float) -> str:
    return f"d{round(1 / density)}" if density > 0 else "d0"


def fit_points(attn: np.ndarray, budget: float | int = BUDGET) -> dict[str, tuple[float, float, float]]:
    """Per static family: (density, recall) of its fit at ``budget`` and the oracle's recall at that density."""
    head = prepare_head(attn)
    d_or, r_or = oracle_curve(head)
    out = {}
    for kind in STATIC_KINDS:
        fit = fit_pattern(head, kind, budget)
        out[kind] = (fit.density, fit.coverage, float(step_recall(d_or, r_or, np.array([fit.density]))[0]))
    return out


def attention_flops(keys_per_query: float, head_dim: int) -> float:
    """FLOPs of one query of one head attending to ``keys_per_query`` keys: 4 n D (module docstring)."""
    return 4.0 * keys_per_query * head_dim


def indexer_flops(visible_keys: float, cfg) -> float:
    """FLOPs of the indexer for one query over ``visible_keys`` keys (all attention heads together); cfg: the
    model's ModelConfig (d_model, indexer_heads, indexer_dim)."""
    hi, di, d = cfg.indexer_heads, cfg.indexer_dim, cfg.d_model
    return 2.0 * hi * di * visible_keys + 3.0 * hi * visible_keys + visible_keys + 2.0 * d * (hi * di + di + hi)
