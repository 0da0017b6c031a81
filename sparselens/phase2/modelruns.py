"""Phase 2 work that needs the models themselves, as self-contained Dask work units (plain functions, no Prefect).

The capture tables hold what a DSA head *used* (its k selected keys) and per-query summaries of the indexer, but
not the dense map a DSA head would have had nor the indexer's full score rows, which the efficiency curves need.
So these units capture directly from the run's models (the validation samples capture keeps maps of, from 0):

- :func:`efficiency_unit` (model, content_type, seq_len): per head, every method's recall on a density grid
  (`phase2_curves`) and its AUC, regret against the oracle and FLOPs per query (`phase2_efficiency`), on the
  dense model's attention or the DSA model's dense attention (``hook_dense_pattern``) with its indexer scores;
  measured on each of `patterns.efficiency_samples` samples alone and reported as the mean, with a 95% interval
  over samples of the AUC and of the recall at the operating point.
- :func:`sparsify_unit` (model, layer): fit each head's pattern per content type on the probabilities it used on
  that type's sample 0 (as classified in the features), then replace the head's attention with those patterns and
  measure the validation loss on other samples (validation seed 1) against the untouched model, with a 95% paired
  bootstrap interval over those samples of the loss change (``delta_low``, ``delta_high``). ``scattered``
  becomes each query's own top keys; ``broad`` has no sparse pattern and is left as it is (``sparsified`` False).

Each unit loads the model from the run store and runs with one torch thread (one core per Dask worker), restoring
the caller's thread count when it returns (a unit run in the caller's process, as without a client, leaves it as
it was).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from sparselens.analysis import efficiency as eff
from sparselens.analysis.patterns import budget_keys, classify_head
from sparselens.data.dataset import CONTENT_TYPES, stack_tokens, validation_samples
from sparselens.models import capture
from sparselens.phase2.sparsify import fit_mask, mean_loss, per_sample_mask, replaced_head
from sparselens.stats import mean_interval, paired_bootstrap
from sparselens.storage import RunStore
from sparselens.threads import torch_threads

EVAL_SEED = 1  # sparsify losses use validation samples of this seed, disjoint from the fitted (seed 0) maps


def load_model(root: str, run_id: str, name: str) -> torch.nn.Module:
    return RunStore(root, run_id).load_model(name)


def one_thread(unit: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """Run a work unit with one torch thread (one core per Dask worker); the caller's setting comes back after."""

    @functools.wraps(unit)
    def run(spec: dict) -> Any:
        with torch_threads(1):
            return unit(spec)

    return run


def head_maps(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Dense attention maps [L, H, T, T] (float64) of ``tokens[1, T]`` and, for DSA, indexer scores [L, T, T]."""
    n_layers, dsa = model.cfg.n_layers, model.cfg.attention == "dsa"
    attn_hook = "hook_dense_pattern" if dsa else "hook_pattern"
    names = [f"blocks.{i}.attn.{attn_hook}" for i in range(n_layers)]
    names += [f"blocks.{i}.indexer.hook_scores" for i in range(n_layers)] if dsa else []
    cache = capture(model, tokens, names)
    maps = np.stack([cache[names[i]][0].double().numpy() for i in range(n_layers)])  # [L, H, T, T]
    if not dsa:
        return maps, None
    scores = np.stack([cache[names[n_layers + i]][0].double().numpy() for i in range(n_layers)])  # [L, T, T]
    return maps, scores


def _flops(method: str, keys: float, visible: float, cfg) -> float:
    """FLOPs per query and head of a method keeping ``keys`` keys (module docstring of efficiency)."""
    d = cfg.head_dim
    if method in ("topk_per_query", "oracle"):  # needs the full score row first
        return eff.attention_flops(visible, d) / 2 + eff.attention_flops(keys, d)
    if method == "indexer":
        return eff.indexer_flops(visible, cfg) / cfg.n_heads + eff.attention_flops(keys, d)
    return eff.attention_flops(keys, d)


def _operating_points(curves: dict, fits: dict, k_b: int, topk: int, t: int) -> dict[str, tuple[float, float]]:
    """(density, recall) where each method runs: a family's fit, top-k_b per query, the indexer at the model's k."""
    area = eff.causal_area(t, t)
    kept = lambda k: float(np.minimum(k, np.arange(1, t + 1)).sum() / area)  # noqa: E731
    points = {kind: (d, r) for kind, (d, r, _) in fits.items()}
    for method, k in (("topk_per_query", k_b), ("indexer", topk), ("oracle", k_b)):
        if method in curves:
            d = kept(k)
            points[method] = (d, float(eff.step_recall(*curves[method], np.array([d]))[0]))
    return points


def _head_rows(keys: dict, curves: dict, fits: dict, grid: np.ndarray, cfg, budget) -> tuple[list, list]:
    t = int(keys["seq_len"])
    k_b, area = budget_keys(budget, t), eff.causal_area(t, t)
    metrics = eff.curve_metrics(curves)
    d_or, r_or = curves["oracle"]
    curve_rows, metric_rows = [], []
    for method, (d, r) in curves.items():
        recall = eff.step_recall(d, r, grid)
        curve_rows += [
            keys | {"method": method, "density": float(x), "recall": float(y)}
            for x, y in zip(grid, recall, strict=True)
        ]
    for method, (d, r) in _operating_points(curves, fits, k_b, cfg.topk, t).items():
        oracle = float(eff.step_recall(d_or, r_or, np.array([d]))[0])
        keys_per_query = d * area / t
        metric_rows.append(
            keys
            | metrics[method]
            | {
                "method": method,
                "op_density": d,
                "op_recall": r,
                "op_regret": oracle - r,
                "keys_per_query": keys_per_query,
                "flops_per_query": _flops(method, keys_per_query, (t + 1) / 2, cfg),
                "dense_flops_per_query": eff.attention_flops((t + 1) / 2, cfg.head_dim),
            }
        )
    return curve_rows, metric_rows


@one_thread
def efficiency_unit(spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Curves and metrics of every head of one (model, content_type, seq_len) over ``n_samples`` validation samples
    (spec: root, run_id, model, content_type, seq_len, budget, grid = number of densities, n_samples): each sample's
    map is measured alone, then `mean_over_samples` reports the mean with its spread."""
    model = load_model(spec["root"], spec["run_id"], spec["model"])
    t = int(spec["seq_len"])
    grid = eff.density_grid(int(spec["grid"]), t)
    curve_rows, metric_rows = [], []
    for i, sample in enumerate(validation_samples(spec["content_type"], t, int(spec.get("n_samples", 1)))):
        maps, scores = head_maps(model, stack_tokens([sample])[:, :-1])
        for layer in range(maps.shape[0]):
            for head in range(maps.shape[1]):
                attn = maps[layer, head]
                curves = eff.head_curves(attn, None if scores is None else scores[layer])
                fits = eff.fit_points(attn, spec["budget"])
                keys = {
                    "model": spec["model"],
                    "content_type": spec["content_type"],
                    "seq_len": t,
                    "layer": layer,
                    "head": head,
                    "kind": classify_head(attn, spec["budget"]).kind,
                    "sample": i,
                }
                c, m = _head_rows(keys, curves, fits, grid, model.cfg, spec["budget"])
                curve_rows += c
                metric_rows += m
    return mean_over_samples(pd.DataFrame(curve_rows), pd.DataFrame(metric_rows))


def mean_over_samples(curves: pd.DataFrame, metrics: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per head and method: curves averaged over samples at each density; metrics averaged, with ``n_samples`` and
    95% t-intervals over samples of ``auc`` and ``op_recall``. A head's ``kind`` is its most frequent kind over
    the samples (ties: the first in alphabetical order)."""
    head = ["model", "content_type", "seq_len", "layer", "head"]
    kinds = metrics.drop_duplicates([*head, "sample"]).groupby(head)["kind"].agg(lambda k: k.value_counts().idxmax())
    mean_curves = curves.groupby([*head, "method", "density"], as_index=False)["recall"].mean()
    numeric = [c for c in metrics.columns if c not in (*head, "method", "kind", "sample")]
    groups = metrics.groupby([*head, "method"], sort=False)
    out = groups[numeric].mean()
    for col in ("auc", "op_recall"):
        intervals = groups[col].apply(lambda x: mean_interval(x.to_numpy()))
        out[f"{col}_low"], out[f"{col}_high"] = [i.low for i in intervals], [i.high for i in intervals]
    out["n_samples"] = groups.size()
    out = out.reset_index()
    return mean_curves.join(kinds, on=head), out.join(kinds, on=head)


def _delta_interval(loss: np.ndarray, base: np.ndarray) -> dict[str, float]:
    """95% paired-bootstrap interval over samples of mean(loss) - mean(base), and the per-sample sd of the change."""
    ci = paired_bootstrap(loss, base, "diff")
    return {
        "delta_low": ci.low,
        "delta_high": ci.high,
        "delta_sd": float(np.std(loss - base, ddof=1)) if ci.n > 1 else float("nan"),
    }


def _fit_heads(model: torch.nn.Module, layer: int, t: int, budget) -> list[list]:
    """fits[c][h]: head h's PatternFit on its used map of sample 0 (seed 0) of content type c, at length t."""
    batch = stack_tokens([validation_samples(ct, t, 1)[0] for ct in CONTENT_TYPES])  # [C, T + 1]
    name = f"blocks.{layer}.attn.hook_pattern"
    probs = capture(model, batch[:, :-1], [name])[name].double().numpy()  # [C, H, T, T]
    return [[classify_head(probs[c, h], budget) for h in range(probs.shape[1])] for c in range(len(CONTENT_TYPES))]


@one_thread
def sparsify_unit(spec: dict) -> pd.DataFrame:
    """Loss change from replacing each head of one layer with its fitted pattern; spec: root, run_id, model,
    layer, seq_len, n_samples (per content type), budget. A head's pattern is fitted per content type (on that
    type's seed-0 sample) and applied to that type's evaluation samples (seed 1), all in one forward pass.
    One row per (head, content_type), plus 'all'."""
    model = load_model(spec["root"], spec["run_id"], spec["model"])
    layer, t = int(spec["layer"]), int(spec["seq_len"])
    samples = [s for ct in CONTENT_TYPES for s in validation_samples(ct, t, int(spec["n_samples"]), seed=EVAL_SEED)]
    batch = stack_tokens(samples)  # [N, T + 1]
    cts = np.array([s.content_type for s in samples])
    of_type = [CONTENT_TYPES.index(ct) for ct in cts]  # [N] content-type index of each sample
    base = mean_loss(model, batch).double().numpy()  # [N]
    fits = _fit_heads(model, layer, t, spec["budget"])  # [C][H]
    rows = []
    for head in range(model.cfg.n_heads):
        masks = [fit_mask(fits[c][head], t) for c in range(len(CONTENT_TYPES))]
        with replaced_head(model, layer, head, per_sample_mask([masks[c] for c in of_type])):
            loss = mean_loss(model, batch).double().numpy()
        for ct in ("all", *CONTENT_TYPES):
            pick = np.ones(len(cts), bool) if ct == "all" else cts == ct
            chosen = [fits[c][head] for c in range(len(CONTENT_TYPES)) if ct in ("all", CONTENT_TYPES[c])]
            kinds = pd.Series([f.kind for f in chosen]).value_counts()
            rows.append(
                {
                    "model": spec["model"],
                    "seq_len": t,
                    "layer": layer,
                    "head": head,
                    "content_type": ct,
                    "kind": str(sorted(kinds[kinds == kinds.max()].index)[0]),
                    "coverage": float(np.mean([f.coverage for f in chosen])),
                    "fit_density": float(np.mean([f.density for f in chosen])),
                    "sparsified": any(f.kind != "broad" for f in chosen),
                    "base_loss": float(base[pick].mean()),
                    "loss": float(loss[pick].mean()),
                    "delta_loss": float((loss - base)[pick].mean()),
                    "n_samples": int(pick.sum()),
                }
                | _delta_interval(loss[pick], base[pick])
            )
    return pd.DataFrame(rows)
