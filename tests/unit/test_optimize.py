"""Phase 3: designers on hand-made calibrations, candidate weights carried over, and design -> train -> evaluate on
the tiny run (tables written, every candidate loadable by name, the reference trained on the same steps)."""

import numpy as np
import pytest
import torch

from sparselens.config import AttentionPlan, LayerPlan, ModelConfig, OptimizeConfig
from sparselens.models import build_model
from sparselens.optimize import designers as dz
from sparselens.optimize.calibrate import SINK_CHOICES, Calibration
from sparselens.optimize.candidates import Design, build_candidate

CFG = ModelConfig(attention="dsa", n_layers=4, d_model=32, n_heads=2, indexer_heads=4, indexer_dim=8, topk=8)
OPT = OptimizeConfig()


def fake_calibration(recall, cover, overlap=None, drops=None) -> Calibration:
    """One content type; `cover[layer]` is the sink+window coverage at every sink choice."""
    n = len(recall)
    overlap = np.eye(n) if overlap is None else np.asarray(overlap)
    sink_window = np.repeat(np.asarray(cover, dtype=float)[:, None], len(SINK_CHOICES), axis=1)
    sink_window[:, 2] += 0.001  # 2 sinks fit best
    drops = drops or {i: np.array([0.05, 0.0, 0.02, 0.001]) for i in range(n)}
    one = {"code": None}
    return Calibration(
        topk=8,
        sparse_layers=list(range(n)),
        recall={k: np.asarray(recall, dtype=float) for k in one},
        oracle={k: np.ones(n) for k in one},
        mass_overlap={k: overlap for k in one},
        count_overlap={k: overlap for k in one},
        sink_window={k: sink_window for k in one},
        head_drop={k: drops for k in one},
        head_share={k: {i: np.full(4, 0.25) for i in range(n)} for k in one},
    )


def rel_loss(costs: dict[int, dict[str, float]]):
    """A PlanLoss where converting layer i (to anything) raises each content type's loss by costs[i][type]."""

    def plan_loss(plan: AttentionPlan) -> dict[str, float]:
        changed = [i for i, p in enumerate(plan.layers) if p.kind != "indexer"]
        return {ct: 1 + sum(costs[i].get(ct, 0.0) for i in changed) for ct in ("code", "assoc_recall")}

    return plan_loss


def test_static_designer_takes_layers_while_the_loss_allows_and_fits_the_sinks():
    cal = fake_calibration(recall=[0.42, 0.9, 0.8, 0.95], cover=[0.41, 0.6, 0.79, 0.5])
    costs = {0: {"code": 0.003}, 1: {"assoc_recall": 0.3}, 2: {"code": 0.001}, 3: {"code": 0.002, "assoc_recall": 0.02}}
    d = dz.static_design(cal, CFG, rel_loss(costs), OPT)
    assert [p.kind for p in d.plan.layers] == ["static", "indexer", "static", "indexer"]
    assert d.plan.layers[0] == LayerPlan.static(2, 6)  # budget k = 8, the best sink count 2
    stop = [r for r in d.decisions if r["decision"] == "stop"]
    assert stop and stop[0]["layer"] == 3  # +2% on assoc_recall: more than 3x the 0.5% tolerance on one type
    assert dz.static_design(cal, CFG, rel_loss({i: {"code": 0.1} for i in range(4)}), OPT) is None


def test_greedy_sharing_never_shares_layer_0_and_stops_at_the_tolerance():
    overlap = [[1, 0, 0, 0], [0.9, 1, 0, 0], [0.5, 0.95, 1, 0], [0.3, 0.6, 0.97, 1]]
    cal = fake_calibration([0.9] * 4, [0.1] * 4, overlap=overlap)
    costs = {1: {"code": 0.002}, 2: {"code": 0.004}, 3: {"code": 0.03}}
    d = dz.shared_design(cal, CFG, rel_loss(costs | {0: {}}), OPT)
    assert [p.kind for p in d.plan.layers] == ["indexer", "shared", "shared", "indexer"]
    assert d.plan.layers[1].source == 0 and d.plan.layers[2].source == 0  # a shared layer is no source itself
    assert any(r["decision"] == "stop" for r in d.decisions)


def test_combined_search_mixes_static_and_shared_then_prunes():
    overlap = [[1, 0, 0, 0], [0.9, 1, 0, 0], [0.5, 0.95, 1, 0], [0.3, 0.6, 0.97, 1]]
    cal = fake_calibration([0.4, 0.9, 0.9, 0.9], [0.39, 0.5, 0.5, 0.5], overlap=overlap)
    costs = {0: {"code": 0.001}, 1: {"code": 0.5}, 2: {"code": 0.002}, 3: {"code": 0.003}}
    d = dz.combined_design(cal, CFG, rel_loss(costs), OPT)
    kinds = [p.kind for p in d.plan.layers]
    assert kinds[:2] == ["static", "indexer"] and set(kinds[2:]) <= {"static", "shared"}  # 1.5% total <= 3 x 1%
    assert d.plan.layers[1].indexer_heads == 2  # the one indexer left is pruned after the search


def test_pruning_keeps_heads_whose_removal_costs_recall():
    d = dz.pruned_design(fake_calibration([0.9] * 4, [0.1] * 4), CFG, OPT)
    layer = d.plan.layers[0]
    assert (layer.indexer_heads, layer.indexer_dim) == (2, 4)  # heads 0 and 2 cost >= 0.01; half the dims
    assert d.keep_heads[0] == (0, 2)
    assert d.new_indexers(CFG) == [0, 1, 2, 3]


def test_adaptive_k_takes_the_largest_p_whose_mean_k_stays_within_k():
    def mean_k(plan):
        p = plan.layers[0].top_p
        return {i: 20 * p for i in range(4)}  # 0.5 -> 10, 0.7 -> 14 > 8

    d = dz.adaptive_design(CFG, lambda plan: {i: 16 * plan.layers[0].top_p for i in range(4)}, OPT)
    assert d.plan.layers[0].top_p == 0.5 and d.plan.layers[0].topk == 16  # 0.5 -> 8 <= 8, 0.7 -> 11.2 > 8
    fallback = dz.adaptive_design(CFG, mean_k, OPT)
    assert fallback.plan.layers[0].topk == 8  # nothing fits with k_max = 2k: k_max falls back to k


def test_a_candidate_keeps_the_dsa_weights_and_the_kept_heads():
    torch.manual_seed(0)
    dsa = build_model(CFG).eval()
    plan = AttentionPlan(
        (
            LayerPlan.static(2, 6),
            LayerPlan.indexer_layer(2, 8, 8),
            LayerPlan.shared(1),
            LayerPlan.indexer_layer(4, 8, 8),
        )
    )
    model = build_candidate(dsa, Design("c", "combined", plan, "test", keep_heads={1: (1, 3)}))
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, dsa.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(model.blocks[3].indexer.wq.weight, dsa.blocks[3].indexer.wq.weight)
    torch.testing.assert_close(model.blocks[1].indexer.wq.weight[:8], dsa.blocks[1].indexer.wq.weight[8:16])
    torch.testing.assert_close(model.blocks[1].indexer.ww.weight, dsa.blocks[1].indexer.ww.weight[[1, 3]])
    assert model.blocks[0].indexer is None and model.blocks[2].indexer is None


@pytest.mark.slow
def test_phase3_design_train_evaluate_on_the_tiny_run(tiny_run, run_copy):
    from sparselens.optimize.evaluate import evaluate
    from sparselens.optimize.finetune import train_design, train_reference
    from sparselens.optimize.phase3 import design, read_designs
    from sparselens.runs import run_preset

    store = run_copy(tiny_run)
    preset = run_preset(store)
    designs = design(store, preset)
    assert {d.family for d in designs} >= {"static", "pruned"}  # the baseline and pruning always exist
    assert read_designs(store) == designs
    dsa = store.load_model("dsa")
    train_reference(store, preset)
    for d in designs:
        train_design(store, preset, dsa, d)
    tables = evaluate(store, preset)
    summary = tables["phase3_candidates"].set_index("candidate")
    assert set(summary.index) == {"dense", "dsa", "reference"} | {d.name for d in designs}
    assert summary.loc["reference", "family"] == "reference"
    assert {"meets_targets", "macs_vs_dsa_4t", "speedup_vs_dense"} <= set(summary.columns)
    assert summary.loc["sink_window", "attention_macs_4t"] < summary.loc["dsa", "attention_macs_4t"]
    tasks = summary[["task_induction", "task_assoc_recall", "task_brackets"]]  # answer accuracy per task at T
    assert tasks.notna().all().all() and ((tasks >= 0) & (tasks <= 1)).all().all()
    assert summary.loc["reference", "task_drop_worst"] == 0.0
    drop = (tasks.loc["reference"] - tasks).max(axis=1)
    assert np.allclose(summary["task_drop_worst"], drop)
    assert not (summary["meets_targets"] & (summary["task_drop_worst"] > 0.02)).any()
    quality = tables["phase3_quality"]
    assert "oracle" in set(quality["model"]) and quality["ratio_reference_low"].notna().any()
    for d in designs:
        loaded = store.load_model(d.name)
        assert loaded.cfg.plan == d.plan
    log = store.latest_checkpoint("reference", "p3_finetune")
    assert log is not None and log[0] == preset.optimize.finetune_steps
    assert not store.read_table("phase3_decisions").empty
    from sparselens.viz.phase3_report import write_phase3_report

    paragraph, shown = write_phase3_report(store, preset.train.seq_len, preset.optimize.time_lengths[-1])
    assert "DSA's whole forward at 4T" in paragraph and "meets_targets" in shown.columns
    assert "Phase 3" in store.read_text("report.html") and store.fs.exists(store.path("charts/phase3/cost-loss.png"))
