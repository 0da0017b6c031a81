"""Phase 3's designers: from calibration measurements to candidate AttentionPlans, each with its reasons.

- `static_design`: layers whose dense attention a sink + window of the same budget covers as well as the indexer's
  selection does (on the hardest content type, within `static_margin`) become `static` with the fitted sinks.
- `shared_design`: greedy F/S search (IndexCache): starting from every layer with its own indexer, repeatedly
  turn the layer whose sharing costs the least calibration loss into `shared` (reusing the earlier layer whose
  selection holds most of its mass), while the loss stays within `shared_tolerance`; layer 0 never shares.
- `pruned_design`: indexers keep only the heads whose removal costs recall (`head_drop_min`), at
  `pruned_dim_fraction` of the dims; new indexers are warmed up by KL before fine-tuning.
- `adaptive_design`: top-p of the indexer's softmax over its 2k best keys, clamped to [k/4, 2k], with the largest
  p whose mean k on calibration stays at or below the fixed k.
- `combined_design`: the static layers, then sharing among the rest, then pruning of the indexers that remain.
- `static_baseline`: every layer sink + window at the same k (no indexer at all), in every table.
Every designer is a pure function of calibration numbers (and, for the greedy search, a loss callback).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sparselens.config import AttentionPlan, LayerPlan, ModelConfig, OptimizeConfig
from sparselens.optimize.calibrate import SINK_CHOICES, Calibration
from sparselens.optimize.candidates import Design

PlanLoss = Callable[[AttentionPlan], float]  # zero-shot mean calibration loss of a plan built on the DSA weights
PlanMeanK = Callable[[AttentionPlan], dict[int, float]]  # measured mean keys per query of each adaptive layer


def _record(designer: str, layer: int, decision: str, evidence: str) -> dict:
    return {"designer": designer, "layer": layer, "decision": decision, "evidence": evidence}


def _base_layers(cfg: ModelConfig) -> list[LayerPlan]:
    return [cfg.layer_plan(i) for i in range(cfg.n_layers)]


def static_layers(cal: Calibration, cfg: ModelConfig, opt: OptimizeConfig) -> tuple[dict[int, LayerPlan], list[dict]]:
    """{layer: static LayerPlan} for the layers sink + window serves as well as the indexer, and the records."""
    k, chosen, records = cfg.topk, {}, []
    pooled, worst_cover, worst_recall = cal.pooled("sink_window"), cal.worst("sink_window"), cal.worst("recall")
    for layer in cal.sparse_layers:
        allowed = [j for j, s in enumerate(SINK_CHOICES) if s < k]
        best = max(allowed, key=lambda j: pooled[layer, j])
        sinks = SINK_CHOICES[best]
        cover, recall = worst_cover[layer, best], worst_recall[layer]
        evidence = f"sinks {sinks} + window {k - sinks}: worst-type coverage {cover:.3f} vs indexer recall {recall:.3f}"
        if cover >= recall - opt.static_margin:
            chosen[layer] = LayerPlan.static(sinks, k - sinks)
            records.append(_record("static", layer, f"static s{sinks} w{k - sinks}", evidence))
        else:
            records.append(_record("static", layer, "keep indexer", evidence))
    return chosen, records


def static_design(cal: Calibration, cfg: ModelConfig, opt: OptimizeConfig) -> Design | None:
    chosen, records = static_layers(cal, cfg, opt)
    if not chosen:
        return None
    layers = [chosen.get(i, p) for i, p in enumerate(_base_layers(cfg))]
    why = (
        f"layers {sorted(chosen)} are served by sink + window as well as by their indexer (margin {opt.static_margin})"
    )
    return Design("static_layers", "static", AttentionPlan(tuple(layers)), why, decisions=tuple(records))


def _share_source(cal: Calibration, layers: list[LayerPlan], layer: int) -> int:
    """The earlier layer with its own selection (indexer or static) whose selection holds most of `layer`'s mass."""
    overlap = cal.pooled("mass_overlap")
    sources = [j for j in range(layer) if layers[j].kind in ("indexer", "static")]
    return max(sources, key=lambda j: overlap[layer, j])


def share_greedy(
    cal: Calibration, layers: list[LayerPlan], plan_loss: PlanLoss, opt: OptimizeConfig
) -> tuple[list[LayerPlan], list[dict]]:
    """Greedy F/S search over the indexer layers of `layers` (module docstring); returns the new layers and records."""
    start = plan_loss(AttentionPlan(tuple(layers)))
    current, records = list(layers), []
    first = min((i for i, p in enumerate(layers) if p.sparse), default=0)
    while True:
        options = []
        for i, p in enumerate(current):
            if p.kind != "indexer" or i == 0 or i == first:
                continue
            trial = list(current)
            src = _share_source(cal, current, i)
            trial[i] = LayerPlan.shared(src)
            options.append((plan_loss(AttentionPlan(tuple(trial))), i, src, trial))
        if not options:
            break
        loss, i, src, trial = min(options, key=lambda o: o[0])
        evidence = f"calibration loss {start:.4f} -> {loss:.4f} ({loss / start - 1:+.2%})"
        if loss > start * (1 + opt.shared_tolerance):
            records.append(_record("shared", i, "keep indexer", f"cheapest sharing would cost {evidence}"))
            break
        current = trial
        overlap = cal.pooled("mass_overlap")[i, src]
        evidence += f"; mass on layer {src}'s top-k {overlap:.3f}"
        records.append(_record("shared", i, f"shared from {src}", evidence))
    return current, records


def shared_design(cal: Calibration, cfg: ModelConfig, plan_loss: PlanLoss, opt: OptimizeConfig) -> Design | None:
    layers, records = share_greedy(cal, _base_layers(cfg), plan_loss, opt)
    shared = [i for i, p in enumerate(layers) if p.kind == "shared"]
    if not shared:
        return None
    why = f"layers {shared} reuse an earlier layer's top-k within {opt.shared_tolerance:.1%} calibration loss"
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
        plan = AttentionPlan.uniform(
            cfg.n_layers, LayerPlan.indexer_layer(cfg.indexer_heads, cfg.indexer_dim, k_max, p, k_min)
        )
        measured = mean_k(plan)
        mean = float(np.mean(list(measured.values())))
        records.append(_record("adaptive_k", -1, f"top_p {p}", f"mean k {mean:.1f} (fixed k {k})"))
        if mean <= k:
            chosen = (p, plan)
    if chosen is None:
        p = min(opt.top_p_grid)
        layer = LayerPlan.indexer_layer(cfg.indexer_heads, cfg.indexer_dim, k, p, k_min)
        chosen = (p, AttentionPlan.uniform(cfg.n_layers, layer))
        records.append(_record("adaptive_k", -1, f"top_p {p}, k_max {k}", "no p kept the mean k <= k with k_max 2k"))
    why = f"top-p {chosen[0]} of the indexer's mass over its best {chosen[1].layers[0].topk} keys, k in [{k_min}, ...]"
    return Design("adaptive_k", "adaptive_k", chosen[1], why, decisions=tuple(records))


def combined_design(cal: Calibration, cfg: ModelConfig, plan_loss: PlanLoss, opt: OptimizeConfig) -> Design:
    """Static layers, then the greedy sharing among the remaining indexer layers, then pruning what is left."""
    chosen, records = static_layers(cal, cfg, opt)
    layers = [chosen.get(i, p) for i, p in enumerate(_base_layers(cfg))]
    layers, shared_records = share_greedy(cal, layers, plan_loss, opt)
    layers, keep, pruned_records = pruned_layers(cal, cfg, layers, opt)
    plan = AttentionPlan(tuple(layers))
    why = f"static + shared + pruned composed: {plan.label()}"
    return Design("combined", "combined", plan, why, keep, tuple(records + shared_records + pruned_records))


def static_baseline(cfg: ModelConfig, opt: OptimizeConfig) -> Design:
    """Every layer: opt.sink_keys sinks + opt.window_keys recent keys (the same k as DSA by default), no indexer."""
    plan = AttentionPlan.uniform(cfg.n_layers, LayerPlan.static(opt.sink_keys, opt.window_keys))
    why = f"baseline: sink {opt.sink_keys} + window {opt.window_keys} in every layer, no indexer"
    return Design("sink_window", "static", plan, why)
