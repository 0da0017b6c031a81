"""Phase 3's designers: from calibration measurements to candidate AttentionPlans, each with its reasons.

All plan losses here are zero-shot (the DSA weights, no training) on the calibration batches, relative to the DSA
model's, per content type: `PlanLoss(plan)` returns {content type: loss / DSA loss}. A conversion is acceptable
while the mean over content types stays within the tolerance and no content type rises by more than three times
it (so a retrieval task cannot be traded for prose).

- `static_design`: greedy over the indexer layers, best first: a layer becomes `static` (sinks + window at the
  same budget, the sink count fitted to the layer's dense attention mass) while the loss stays acceptable
  (`static_tolerance`). Layers are tried in the order of how well sink + window covers their attention against
  their indexer's recall (on the hardest content type), so layers with local/sink attention go first.
- `shared_design`: greedy F/S search (IndexCache): a layer becomes `shared` (reusing the earlier layer whose
  selection holds most of its attention mass) while acceptable (`shared_tolerance`); layer 0 never shares.
- `pruned_design`: indexers keep the heads whose removal costs recall (`head_drop_min`), at
  `pruned_dim_fraction` of the dims; new indexers are warmed up by KL before fine-tuning.
- `adaptive_design`: top-p of the indexer's softmax over its 2k best keys, clamped to [k/4, 2k], with the largest
  p whose mean k on calibration stays at or below the fixed k.
- `combined_design`: one greedy search over both conversions (static or shared, whichever costs less each step,
  within `combined_tolerance`), then pruning of the indexers that remain.
- `static_baseline`: every layer sink + window at the same k (no indexer at all), in every table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sparselens.config import AttentionPlan, LayerPlan, ModelConfig, OptimizeConfig
from sparselens.optimize.calibrate import SINK_CHOICES, Calibration
from sparselens.optimize.candidates import Design

PlanLoss = Callable[[AttentionPlan], dict[str, float]]  # {content type: zero-shot loss / DSA's}
PlanMeanK = Callable[[AttentionPlan], dict[int, float]]  # measured mean keys per query of each adaptive layer
Convert = Callable[[list[LayerPlan], int], LayerPlan | None]  # a layer's replacement, or None if not allowed


def _record(designer: str, layer: int, decision: str, evidence: str) -> dict:
    return {"designer": designer, "layer": layer, "decision": decision, "evidence": evidence}


def _base_layers(cfg: ModelConfig) -> list[LayerPlan]:
    return [cfg.layer_plan(i) for i in range(cfg.n_layers)]


def _acceptable(rel: dict[str, float], tolerance: float) -> bool:
    rises = np.array(list(rel.values())) - 1
    return rises.mean() <= tolerance and rises.max() <= 3 * tolerance


def _describe(rel: dict[str, float]) -> str:
    worst = max(rel, key=rel.get)
    return f"mean {np.mean(list(rel.values())) - 1:+.2%}, worst {worst} {rel[worst] - 1:+.2%}"


def fitted_static(cal: Calibration, layer: int, k: int) -> tuple[LayerPlan, str]:
    """The sink + window plan of budget k whose sink count holds most of the layer's mass; and the evidence."""
    pooled, worst_cover, worst_recall = cal.pooled("sink_window"), cal.worst("sink_window"), cal.worst("recall")
    best = max((j for j, s in enumerate(SINK_CHOICES) if s < k), key=lambda j: pooled[layer, j])
    sinks = SINK_CHOICES[best]
    cover, recall = worst_cover[layer, best], worst_recall[layer]
    return LayerPlan.static(sinks, k - sinks), f"coverage {cover:.3f} vs indexer recall {recall:.3f} (worst type)"


def _static_gap(cal: Calibration, layer: int) -> float:
    """Indexer recall minus the best sink + window coverage, hardest content type: small = static-friendly."""
    return float(cal.worst("recall")[layer] - cal.worst("sink_window")[layer].max())


def _share_source(cal: Calibration, layers: list[LayerPlan], layer: int) -> int | None:
    """The earlier layer with its own selection (indexer or static) whose selection holds most of `layer`'s mass."""
    sources = [j for j in range(layer) if layers[j].kind in ("indexer", "static")]
    return max(sources, key=lambda j: cal.pooled("mass_overlap")[layer, j]) if sources else None


def to_static(cal: Calibration, k: int) -> Convert:
    def convert(layers: list[LayerPlan], i: int) -> LayerPlan | None:
        return fitted_static(cal, i, k)[0] if layers[i].kind == "indexer" else None

    return convert


def to_shared(cal: Calibration) -> Convert:
    def convert(layers: list[LayerPlan], i: int) -> LayerPlan | None:
        first = min(j for j, p in enumerate(layers) if p.sparse)
        if layers[i].kind != "indexer" or i in (0, first):
            return None
        src = _share_source(cal, layers, i)
        return None if src is None else LayerPlan.shared(src)

    return convert


def greedy(
    layers: list[LayerPlan], converts: dict[str, Convert], plan_loss: PlanLoss, tolerance: float, order=None
) -> tuple[list[LayerPlan], list[dict]]:
    """Repeatedly apply the acceptable conversion that costs the least zero-shot loss; stop when none is left.

    `order` (optional, layer -> sort key) breaks near-ties towards the layers the measurements favour.
    """
    current, records = list(layers), []
    while True:
        options = []
        for name, convert in converts.items():
            for i in range(len(current)):
                new = convert(current, i)
                if new is not None:
                    trial = current[:i] + [new] + current[i + 1 :]
                    rel = plan_loss(AttentionPlan(tuple(trial)))
                    key = (round(float(np.mean(list(rel.values()))), 4), order(i) if order else 0)
                    options.append((key, name, i, new, trial, rel))
        good = [o for o in options if _acceptable(o[5], tolerance)]
        if not good:
            if options:
                _, name, i, new, _, rel = min(options, key=lambda o: o[0])
                records.append(_record(name, i, "stop", f"cheapest next: {new.label()} would cost {_describe(rel)}"))
            return current, records
        _, name, i, new, current, rel = min(good, key=lambda o: o[0])
        records.append(_record(name, i, new.label(), f"zero-shot loss {_describe(rel)} (all changes so far)"))


def static_design(cal: Calibration, cfg: ModelConfig, plan_loss: PlanLoss, opt: OptimizeConfig) -> Design | None:
    layers, records = greedy(
        _base_layers(cfg), {"static": to_static(cal, cfg.topk)}, plan_loss, opt.static_tolerance,
        order=lambda i: _static_gap(cal, i),
    )  # fmt: skip
    records += [_record("static", i, "fit", fitted_static(cal, i, cfg.topk)[1]) for i in cal.sparse_layers]
    chosen = [i for i, p in enumerate(layers) if p.kind == "static"]
    if not chosen:
        return None
    why = f"layers {chosen} read sinks + window within {opt.static_tolerance:.1%} zero-shot calibration loss"
    return Design("static_layers", "static", AttentionPlan(tuple(layers)), why, decisions=tuple(records))


def shared_design(cal: Calibration, cfg: ModelConfig, plan_loss: PlanLoss, opt: OptimizeConfig) -> Design | None:
    layers, records = greedy(_base_layers(cfg), {"shared": to_shared(cal)}, plan_loss, opt.shared_tolerance)
    shared = [i for i, p in enumerate(layers) if p.kind == "shared"]
    if not shared:
        return None
    overlap = cal.pooled("mass_overlap")
    records += [_record("shared", i, "overlap", f"mass on layer {p.source}'s top-k {overlap[i, p.source]:.3f}")
                for i, p in enumerate(layers) if p.kind == "shared"]  # fmt: skip
    why = f"layers {shared} reuse an earlier layer's top-k within {opt.shared_tolerance:.1%} zero-shot loss"
    return Design("shared_indices", "shared", AttentionPlan(tuple(layers)), why, decisions=tuple(records))


def pruned_layers(
    cal: Calibration, cfg: ModelConfig, layers: list[LayerPlan], opt: OptimizeConfig
) -> tuple[list[LayerPlan], dict[int, tuple[int, ...]], list[dict]]:
    """Smaller indexers for the indexer layers of `layers`: kept heads by recall drop, dims by the fraction."""
    types = list(cal.head_drop)
    drops = {layer: np.mean([cal.head_drop[ct][layer] for ct in types], axis=0) for layer in cal.head_drop[types[0]]}
    di = max(4, int(cfg.indexer_dim * opt.pruned_dim_fraction) // 4 * 4)
    out, keep, records = list(layers), {}, []
    for i, p in enumerate(layers):
        if p.kind != "indexer" or i not in drops:
            continue
        order = np.argsort(-drops[i])
        kept = tuple(sorted(int(j) for j in order if drops[i][j] >= opt.head_drop_min)) or (int(order[0]),)
        out[i] = LayerPlan.indexer_layer(len(kept), di, p.topk, p.top_p, p.k_min)
        keep[i] = kept
        detail = ", ".join(f"h{j} {drops[i][j]:+.3f}" for j in range(len(drops[i])))
        records.append(_record("pruned", i, f"indexer {len(kept)}x{di}", f"recall lost without each head: {detail}"))
    return out, keep, records


def pruned_design(cal: Calibration, cfg: ModelConfig, opt: OptimizeConfig) -> Design:
    layers, keep, records = pruned_layers(cal, cfg, _base_layers(cfg), opt)
    first = next(p for p in layers if p.kind == "indexer")
    why = f"indexers cut to the heads whose removal costs >= {opt.head_drop_min} recall, {first.indexer_dim} dims"
    return Design("pruned_indexers", "pruned", AttentionPlan(tuple(layers)), why, keep, tuple(records))


def adaptive_design(cfg: ModelConfig, mean_k: PlanMeanK, opt: OptimizeConfig) -> Design:
    """The largest top-p (of opt.top_p_grid) whose mean k over the adaptive layers stays <= the fixed k."""
    k, records = cfg.topk, []
    k_max, k_min = 2 * k, max(1, k // 4)
    chosen = None
    for p in sorted(opt.top_p_grid):
        layer = LayerPlan.indexer_layer(cfg.indexer_heads, cfg.indexer_dim, k_max, p, k_min)
        plan = AttentionPlan.uniform(cfg.n_layers, layer)
        mean = float(np.mean(list(mean_k(plan).values())))
        records.append(_record("adaptive_k", -1, f"top_p {p}", f"mean k {mean:.1f} (fixed k {k})"))
        if mean <= k:
            chosen = (p, plan)
    if chosen is None:
        p = min(opt.top_p_grid)
        layer = LayerPlan.indexer_layer(cfg.indexer_heads, cfg.indexer_dim, k, p, k_min)
        chosen = (p, AttentionPlan.uniform(cfg.n_layers, layer))
        records.append(_record("adaptive_k", -1, f"top_p {p}, k_max {k}", "no p kept the mean k <= k with k_max 2k"))
    top = chosen[1].layers[0].topk
    why = f"top-p {chosen[0]} of the indexer's mass over its best {top} keys, k in [{k_min}, {top}]"
    return Design("adaptive_k", "adaptive_k", chosen[1], why, decisions=tuple(records))


def combined_design(cal: Calibration, cfg: ModelConfig, plan_loss: PlanLoss, opt: OptimizeConfig) -> Design:
    """One greedy search over static and shared conversions, then pruning of the indexers that remain."""
    converts = {"static": to_static(cal, cfg.topk), "shared": to_shared(cal)}
    layers, records = greedy(_base_layers(cfg), converts, plan_loss, opt.combined_tolerance)
    layers, keep, pruned_records = pruned_layers(cal, cfg, layers, opt)
    plan = AttentionPlan(tuple(layers))
    why = f"static and shared layers within {opt.combined_tolerance:.1%} zero-shot loss, then pruned: {plan.label()}"
    return Design("combined", "combined", plan, why, keep, tuple(records + pruned_records))


def static_baseline(cfg: ModelConfig, opt: OptimizeConfig) -> Design:
    """Every layer: opt.sink_keys sinks + opt.window_keys recent keys (the same k as DSA by default), no indexer."""
    plan = AttentionPlan.uniform(cfg.n_layers, LayerPlan.static(opt.sink_keys, opt.window_keys))
    why = f"baseline: sink {opt.sink_keys} + window {opt.window_keys} in every layer, no indexer"
    return Design("sink_window", "static", plan, why)
