"""Evaluation with error bars: per-sample tables, intervals that hold their values, a paired ratio, the task-accuracy
adapter, and the report sections and end-of-run summary built from them."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sparselens.config import get_preset
from sparselens.data.dataset import stack_tokens, validation_samples
from sparselens.evaluation import evaluate_run, evaluation_units, read_task_accuracy, summary_table
from sparselens.metrics import recall_per_query
from sparselens.models import capture
from sparselens.storage import RunStore
from sparselens.viz.eval_report import headline, run_summary_text, write_run_sections

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(tiny_run.run_dir, dest / "runs" / tiny_run.run_id)
    store = RunStore(str(dest), tiny_run.run_id)
    seen = []
    tables = evaluate_run(store, TINY, lambda done, total: seen.append((done, total)))
    return store, tables, seen


def test_losses_are_token_means_with_intervals_over_samples(evaluated):
    store, tables, _ = evaluated
    losses, samples = tables["eval_loss"], tables["eval_loss_samples"]
    model = store.load_model("dense")
    batch = stack_tokens(validation_samples("code", 64, TINY.eval.n_samples))  # [n, T + 1]
    with torch.no_grad():
        logits = model(batch[:, :-1])
        direct = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).item()
    row = losses[(losses.model == "dense") & (losses.content_type == "code") & (losses.seq_len == 64)].iloc[0]
    assert row["loss"] == pytest.approx(direct, rel=1e-5)
    assert row["loss_low"] < row["loss"] < row["loss_high"] and row["n_samples"] == TINY.eval.n_samples
    per = samples[(samples.model == "dense") & (samples.content_type == "code") & (samples.seq_len == 64)]["loss"]
    sd = per.std(ddof=1)
    assert row["loss_high"] - row["loss"] == pytest.approx(12.706 * sd / np.sqrt(2), rel=1e-3)  # t(0.975, 1 df)
    assert store.read_table("eval_loss").shape == losses.shape  # written
    ids = samples.groupby("model")["sample_id"].apply(sorted)
    assert ids["dense"] == ids["dsa"]  # the same samples under both models: the ratio can be paired


def test_recall_per_sample_and_layer_matches_a_direct_capture(evaluated):
    store, tables, _ = evaluated
    model, k = store.load_model("dsa"), TINY.model.topk
    sample = validation_samples("prose", 64, TINY.eval.recall_samples)[1]  # text windows depend on n
    names = ["blocks.1.attn.hook_dense_pattern", "blocks.1.indexer.hook_topk"]
    cache = capture(model, stack_tokens([sample])[:, :-1], names)
    recall, oracle = recall_per_query(cache[names[0]], cache[names[1]])
    got = tables["indexer_recall_samples"].set_index(["sample_id", "layer"]).loc[(sample.sample_id, 1)]
    assert got["recall"] == pytest.approx(recall[0, k:].double().mean().item(), rel=1e-6)
    assert got["oracle_recall"] == pytest.approx(oracle[0, k:].double().mean().item(), rel=1e-6)
    rec = tables["indexer_recall"]
    assert ((rec.recall_low <= rec.recall) & (rec.recall <= rec.recall_high)).all()
    assert rec.recall_low.between(0, 1).all() and rec.recall_high.between(0, 1).all()
    assert (rec.recall <= rec.oracle_recall + 1e-9).all() and (rec.n_samples == TINY.eval.recall_samples).all()


def test_summary_ratio_is_paired_and_progress_counts_every_unit(evaluated):
    _, tables, seen = evaluated
    summary = tables["eval_summary"]
    assert len(summary) == 5 * len(TINY.eval.length_multipliers)
    np.testing.assert_allclose(summary["ratio"], summary["dsa_loss"] / summary["dense_loss"])
    assert ((summary.ratio_low <= summary.ratio) & (summary.ratio <= summary.ratio_high)).all()
    assert seen[-1] == (evaluation_units(TINY), evaluation_units(TINY))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_paired_bootstrap_sees_the_pairing():
    rng = np.random.default_rng(0)
    dense = rng.uniform(1.0, 4.0, 32)  # samples differ a lot; the models differ by exactly 2 %
    rows = [("dense", dense), ("dsa", dense * 1.02)]
    losses = pd.DataFrame(
        [
            {"run_id": "r", "model": m, "content_type": "code", "seq_len": 64, "sample_id": f"s{i}", "loss": v}
            for m, values in rows
            for i, v in enumerate(values)
        ]
    )
    recall = pd.DataFrame(columns=["content_type", "seq_len", "sample_id", "recall", "oracle_recall"])
    row = summary_table(losses, recall).iloc[0]
    assert row["ratio"] == pytest.approx(1.02) and row["ratio_high"] - row["ratio_low"] < 1e-9  # paired: no spread
    assert row["dense_high"] - row["dense_low"] > 0.5  # while each model's own loss varies widely
    assert row["n_recall_samples"] == 0 and np.isnan(row["recall"])


def test_task_accuracy_adapter_reads_eval_tasks(evaluated, run_copy):
    store, tables, _ = evaluated
    written = tables["eval_tasks"]  # evaluate_run scores every synthetic task for both models at every length
    assert len(written) == 2 * 3 * store.read_table("eval_loss").seq_len.nunique()
    assert ((written.ci_low <= written.accuracy) & (written.accuracy <= written.ci_high)).all()
    assert (written.n_answers > 0).all() and (written.n_correct <= written.n_answers).all()
    store = run_copy(store)
    store.delete_table("eval_tasks")
    assert read_task_accuracy(store) is None  # older runs
    tasks = pd.DataFrame(
        {
            "run_id": ["tiny"] * 2,
            "model": ["dense", "dsa"],
            "content_type": ["induction"] * 2,
            "seq_len": [64, 64],
            "n_samples": [2, 2],
            "n_answers": [100, 100],
            "n_correct": [91, 40],
            "accuracy": [0.91, 0.40],
            "ci_low": [0.84, 0.31],
            "ci_high": [0.95, 0.50],
            "sample_acc_sd": [0.01, 0.02],
            "answer_loss": [0.3, 2.0],
        }
    )
    store.write_table("eval_tasks", tasks)
    got = read_task_accuracy(store)
    assert list(got.columns) == ["model", "content_type", "seq_len", "accuracy", "low", "high", "n", "n_samples"]
    text = run_summary_text(store, 64, "REPORT")
    assert "induction     dense  0.910 [0.840, 0.950]  n=100" in text and "Report: REPORT" in text
    assert "DSA / dense loss at T = 64" in text and "recall" in text


def test_sections_put_training_and_evaluation_first(evaluated, run_copy):
    store = run_copy(evaluated[0])
    store.write_table("train_log", pd.DataFrame(_log_rows()))
    path = write_run_sections(store, 64, TINY.model.topk)
    page = store.read_text("report.html")
    assert path.endswith("report.html")
    assert page.index("<h2>Training</h2>") < page.index("<h2>Evaluation</h2>")
    first = headline(store.read_table("eval_summary"), 64).iloc[0]
    assert first["DSA / dense"] in page and "[" in first["DSA / dense"]  # the ratio with its interval
    assert page.count('class="vega-spec"') == 3  # loss curves, ratio, recall


def _log_rows() -> list[dict]:
    rows = []
    for model, stage, first, kl in (("dense", "pretrain", 0, None), ("dsa", "warmup", 60, 0.2)):
        for step in range(first + 9, first + 60, 10):
            row = {"run_id": "tiny", "model": model, "stage": stage, "step": step, "loss": 3.0, "lm_loss": 3.0}
            rows.append(row | {"kl_loss": kl, "lr": 1e-3, "tokens_seen": 64 * step, "wall_s": 0.1})
    return rows
