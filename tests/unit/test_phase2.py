"""Phase 2 end to end on the tiny captured run (no cluster): every table, its invariants, charts and the report."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest

from sparselens.analysis import KINDS
from sparselens.config import get_preset
from sparselens.phase2.run import run_phase2
from sparselens.storage import RunStore

HEAD = ["model", "content_type", "seq_len", "layer", "head"]


@pytest.fixture(scope="module")
def phase2_store(tiny_captured, tmp_path_factory) -> RunStore:
    dest = tmp_path_factory.mktemp("phase2")
    shutil.copytree(tiny_captured.run_dir, dest / "runs" / tiny_captured.run_id)
    store = RunStore(str(dest), tiny_captured.run_id)
    result = run_phase2(store, get_preset("tiny").patterns, client=None)
    assert result["charts"] >= 9
    return store


def test_head_features_cover_every_captured_head_and_decompose_to_one(phase2_store):
    heads = phase2_store.read_table("phase2_head_features")
    qs = phase2_store.read_table("query_stats", columns=[*HEAD, "query_pos", "sink_mass"])
    assert len(heads) == len(qs[HEAD].drop_duplicates()) == 2 * 5 * 3 * 2 * 2  # models x types x lengths x L x H
    dec = heads[[f"dec_{k}" for k in ("sink", "local", "vertical", "slash", "block", "residual")]].sum(axis=1)
    np.testing.assert_allclose(dec, 1.0, atol=1e-6)
    assert set(heads["kind"]) <= set(KINDS)
    assert heads.loc[heads.model == "dsa", "dsa_recall"].notna().all()
    assert heads.loc[heads.model == "dense", "dsa_recall"].isna().all()
    direct = qs[qs.query_pos >= 1].groupby(HEAD)["sink_mass"].mean().rename("direct").reset_index()
    merged = heads.merge(direct, on=HEAD)
    np.testing.assert_allclose(merged["sink_mass"], merged["direct"], rtol=1e-6)  # dask groupby == pandas
    for col in ("local_w16", "vertical_conc", "slash_conc", "block_conc", "coverage", "entropy_norm"):
        assert heads[col].between(0, 1 + 1e-9).all(), col


def test_ground_truth_and_relevance_are_shares_beside_chance(phase2_store):
    gt = phase2_store.read_table("phase2_ground_truth")
    assert set(gt["content_type"]) == {"assoc_recall", "induction", "brackets"}
    assert gt["needed_mass"].between(0, 1).all() and (gt["needed_chance"] > 0).all()
    assert (gt.groupby(["model", "content_type", "seq_len"])["rank"].min() == 1).all()
    rel = phase2_store.read_table("phase2_relevance")
    assert set(rel["model"]) == {"dsa"}
    shares = rel[[c for c in rel.columns if c.endswith(("_share", "_chance"))]]
    assert ((shares >= 0) & (shares <= 1) | shares.isna()).all().all()
    assert rel.loc[rel.content_type.isin(["code", "prose"]), "needed_share"].isna().all()


def test_content_map_and_clusters(phase2_store):
    dist = phase2_store.read_table("phase2_kind_distribution")
    total = dist.groupby(["model", "seq_len", "content_type"])["share"].sum()
    np.testing.assert_allclose(total, 1.0)
    stab = phase2_store.read_table("phase2_kind_stability")
    assert len(stab) == 2 * 3 * 2 * 2 and stab["stability"].between(0.2, 1).all()
    summary = phase2_store.read_table("phase2_cluster_summary")
    assert set(summary["scope"]) == {"group", "model"} and len(summary) == 2 * 5 * 3 + 2
    assert summary["ari_kmeans"].between(-1, 1).all() and (summary["kmeans_k"] >= 1).all()
    points = phase2_store.read_table("phase2_clusters")
    assert len(points) == 2 * len(phase2_store.read_table("phase2_head_features"))  # group + model scope


def test_efficiency_oracle_dominates_and_sparsify_covers_every_head(phase2_store):
    curves = phase2_store.read_table("phase2_curves")
    keys = [*HEAD, "density"]
    oracle = curves[curves.method == "oracle"].set_index(keys)["recall"]
    others = curves[curves.method != "oracle"].join(oracle.rename("oracle"), on=keys)
    assert (others["oracle"] >= others["recall"] - 1e-9).all()
    assert {"indexer", "topk_per_query", "vertical_slash"} <= set(curves["method"])
    eff = phase2_store.read_table("phase2_efficiency")
    assert (eff["op_regret"] >= -1e-9).all() and (eff["flops_per_query"] > 0).all()
    sp = phase2_store.read_table("phase2_sparsify")
    every = sp[sp.content_type == "all"]
    assert len(every) == 2 * 2 * 2 and not every.duplicated(["model", "layer", "head"]).any()
    assert np.isfinite(every["delta_loss"]).all()
    per_type = sp[sp.content_type != "all"]
    assert (per_type["sparsified"] == (per_type["kind"] != "broad")).all()  # fitted per content type
    assert (per_type.loc[~per_type.sparsified, "delta_loss"].abs() < 1e-5).all()  # broad: left as it was
    any_type = per_type.groupby(["model", "layer", "head"])["sparsified"].any()
    assert (every.set_index(["model", "layer", "head"])["sparsified"] == any_type).all()


def test_report_names_extreme_heads_and_is_offline(phase2_store):
    page = phase2_store.read_text("report.html")
    assert "Phase 2" in page
    sp = phase2_store.read_table("phase2_sparsify")
    ranked = sp[(sp.content_type == "all") & sp.sparsified].sort_values("delta_loss", ascending=False)
    names = [f"{r.model} L{r.layer}·H{r.head}" for r in ranked.itertuples()]
    most, least = page.split("Costing the most loss:")[1].split("Costing the least:")
    assert all(n in most for n in names[:3]) and all(n in least.split("</p>")[0] for n in names[-3:])
    assert not re.search(r"(src|href)=\"https?:", page)
    charts = phase2_store.read_table("phase2_charts")
    for row in charts.itertuples():
        assert phase2_store.read_bytes(row.png)[:8] == b"\x89PNG\r\n\x1a\n"
        assert "cdn.jsdelivr" not in phase2_store.read_text(row.html)


def test_model_units_run_on_one_thread_and_restore_the_callers(tiny_captured, monkeypatch):
    import torch

    from sparselens.phase2 import modelruns

    seen = []
    loss = modelruns.mean_loss
    monkeypatch.setattr(modelruns, "mean_loss", lambda m, b: seen.append(torch.get_num_threads()) or loss(m, b))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = {"root": tiny_captured.root, "run_id": tiny_captured.run_id, "model": "dense", "layer": 0}
        modelruns.sparsify_unit(spec | {"seq_len": 32, "n_samples": 1, "budget": 0.125})
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_efficiency_and_sparsify_report_their_spread_over_samples(phase2_store):
    n = get_preset("tiny").patterns.efficiency_samples
    eff = phase2_store.read_table("phase2_efficiency")
    assert n > 1 and (eff["n_samples"] == n).all()
    assert ((eff.auc_low <= eff.auc + 1e-12) & (eff.auc <= eff.auc_high + 1e-12)).all()
    assert (eff.auc_high > eff.auc_low).any()  # the samples differ: a real spread
    sp = phase2_store.read_table("phase2_sparsify")
    assert (sp["n_samples"] >= 2).all()
    changed = sp[sp.sparsified]
    assert (
        (changed.delta_low <= changed.delta_loss + 1e-12) & (changed.delta_loss <= changed.delta_high + 1e-12)
    ).all()
    assert (changed.delta_sd > 0).any()


def test_mean_over_samples_averages_metrics_and_takes_the_modal_kind():
    from sparselens.phase2.modelruns import mean_over_samples

    head = {"model": "dense", "content_type": "code", "seq_len": 8, "layer": 0, "head": 0}
    kinds = ["local", "sink", "local"]
    metrics = pd.DataFrame(
        [
            head | {"method": "oracle", "kind": k, "sample": i, "auc": 0.5 + 0.1 * i, "op_recall": 0.9}
            for i, k in enumerate(kinds)
        ]  # fmt: skip
    )
    curves = pd.DataFrame(
        [
            head | {"method": "oracle", "kind": k, "sample": i, "density": 0.5, "recall": 0.2 * i}
            for i, k in enumerate(kinds)
        ]  # fmt: skip
    )
    mean_curves, mean_metrics = mean_over_samples(curves, metrics)
    row = mean_metrics.iloc[0]
    assert len(mean_metrics) == 1 and row["kind"] == "local" and row["n_samples"] == 3
    assert row["auc"] == pytest.approx(0.6) and row["auc_low"] < 0.6 < row["auc_high"]
    assert row["op_recall_low"] == pytest.approx(0.9) == row["op_recall_high"]  # no spread, no width
    assert mean_curves["recall"].tolist() == pytest.approx([0.2]) and mean_curves["kind"].tolist() == ["local"]
