"""Tests for sparselens.task_accuracy: Wilson intervals, answer positions, accuracy counting, copy-head scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sparselens.config import ModelConfig
from sparselens.data import TASKS, validation_samples
from sparselens.data.synthetic import BRACKET_PAIRS
from sparselens.models.gpt import build_model
from sparselens.stats import wilson
from sparselens.storage import RunStore
from sparselens.task_accuracy import (
    accuracy_record,
    answer_hits,
    answer_mask,
    copy_head_scores,
    task_accuracy,
    task_accuracy_table,
)

T = 96


@pytest.mark.parametrize(
    ("correct", "n", "expected"),
    [(0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (5, 10, (0.2366, 0.7634)), (81, 100, (0.7222, 0.8749))],
    ids=["none", "all", "half", "81of100"],
)
def test_wilson_interval_matches_published_values(correct, n, expected):
    interval = wilson(correct, n)
    lo, hi = interval.low, interval.high
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_rejects_bad_counts_and_is_nan_without_data():
    assert all(math.isnan(x) for x in (wilson(0, 0).value, wilson(0, 0).low, wilson(0, 0).high))
    for correct, n in ((3, 2), (-1, 5), (1, -1)):
        with pytest.raises(ValueError, match="successes"):
            wilson(correct, n)


def test_answer_positions_are_what_each_task_asks_for():
    """Independent parses: recall answers are query value bytes, bracket answers are closers, induction answers
    repeat the byte after an earlier occurrence of the current byte."""
    closers = {c for _, c in BRACKET_PAIRS}
    for sample in validation_samples("brackets", T, 4):
        mask = answer_mask(sample)
        assert np.array_equal(mask, np.isin(sample.tokens[1:], list(closers)))
    for sample in validation_samples("assoc_recall", T, 4):
        text = sample.tokens.astype(np.uint8).tobytes()
        queries_start = text.index(b"|") + 1
        mask = answer_mask(sample)
        assert mask.any() and not mask[: queries_start - 1].any()  # no answer among the definitions
        for t in np.flatnonzero(mask):  # the target follows the latest earlier occurrence of the query key
            latest = text.rindex(text[t : t + 1], 0, t)
            assert text[latest + 1] == text[t + 1]
    for sample in validation_samples("induction", T, 4):
        mask = answer_mask(sample)
        tokens = sample.tokens
        assert mask.sum() > T // 4
        for t in np.flatnonzero(mask):
            earlier = np.flatnonzero(tokens[:t] == tokens[t])  # earlier occurrences of the current byte
            assert np.any(tokens[earlier + 1] == tokens[t + 1])


class _TableModel(nn.Module):
    """Predicts for each known input row the bytes a table holds for it (one-hot logits), whatever the batching."""

    def __init__(self, samples, predictions: torch.Tensor) -> None:
        super().__init__()
        self.table = {s.tokens[:-1].tobytes(): row for s, row in zip(samples, predictions, strict=True)}  # row [T]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = torch.stack([self.table[row.numpy().tobytes()] for row in tokens])  # [B, T]
        return torch.nn.functional.one_hot(rows, 256).float() * 10  # [B, T, V]


@pytest.mark.parametrize("task", TASKS)
def test_accuracy_counts_only_answer_positions(task):
    samples = validation_samples(task, T, 3)
    targets = torch.stack([torch.from_numpy(s.tokens[1:]) for s in samples])  # [B, T]
    masks = np.stack([answer_mask(s) for s in samples])  # [B, T]
    perfect = accuracy_record(answer_hits(_TableModel(samples, targets), samples, batch_size=8))
    assert perfect["accuracy"] == 1.0 and perfect["n_answers"] == masks.sum() and perfect["n_samples"] == 3
    assert perfect["ci_high"] == 1.0 and perfect["ci_low"] < 1.0
    # right everywhere except at the answers: 0
    wrong_at_answers = targets.clone()
    wrong_at_answers[torch.from_numpy(masks)] = (wrong_at_answers[torch.from_numpy(masks)] + 1) % 256
    none = accuracy_record(answer_hits(_TableModel(samples, wrong_at_answers), samples, batch_size=2))
    assert none["n_correct"] == 0 and none["ci_low"] == 0.0
    assert none["answer_loss"] > perfect["answer_loss"]


def test_per_sample_spread_and_counts():
    hits = [(np.array([True, True, False, False]), np.zeros(4)), (np.array([True, True]), np.ones(2))]
    rec = accuracy_record(hits)
    assert (rec["n_answers"], rec["n_correct"], rec["n_samples"]) == (6, 4, 2)
    assert rec["accuracy"] == pytest.approx(4 / 6)
    assert rec["sample_acc_sd"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert rec["answer_loss"] == pytest.approx(2 / 6)


def _tiny_gpt() -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=256, indexer_heads=2, indexer_dim=8, topk=8)
    return build_model(cfg).eval()


def test_task_accuracy_table_fits_its_schema(tmp_path):
    model = _tiny_gpt()
    table = task_accuracy_table({"dense": model}, [32, 64], n_samples=2, run_id="r")
    assert len(table) == 2 * len(TASKS)
    assert (table.n_samples == 2).all() and (table.n_answers > 0).all()
    assert ((table.ci_low <= table.accuracy) & (table.accuracy <= table.ci_high)).all()
    store = RunStore(str(tmp_path), "r")
    store.create({})
    store.write_table("eval_tasks", table)
    back = store.read_table("eval_tasks")
    assert list(back.columns) == list(table.columns) and len(back) == len(table)
    with pytest.raises(ValueError, match="valid tasks"):
        task_accuracy(model, "code", 32, 1)


def test_copy_head_scores_find_planted_heads():
    """Plant a previous-token head (layer 0, head 1) and a head that attends to the needed keys (layer 1, head 0)."""
    model = _tiny_gpt()
    samples = validation_samples("induction", T, 2)
    planted = {}
    for b, sample in enumerate(samples):
        needed = torch.full((T, T), 0.0)
        for t, keys in enumerate(sample.needed):
            if len(keys):
                needed[t, keys] = 1.0 / len(keys)
            else:
                needed[t, : t + 1] = 1.0 / (t + 1)
        planted[b] = needed

    def plant(layer):
        def hook(_module, _inputs, output):  # output [B, H, T, S]
            out = output.clone()
            if layer == 0:
                out[:, 1] = torch.diag_embed(torch.ones(T - 1), offset=-1)
                out[:, 1, 0, 0] = 1.0
            else:
                out[:, 0] = torch.stack([planted[b] for b in range(out.shape[0])])
            return out

        return hook

    handles = [model.blocks[i].attn.hook_pattern.register_forward_hook(plant(i)) for i in range(2)]
    try:
        scores = copy_head_scores(model, "induction", T, 2, batch_size=2).set_index(["layer", "head"])
    finally:
        for h in handles:
            h.remove()
    assert scores.loc[(1, 0), "needed_score"] == pytest.approx(1.0)
    assert scores.loc[(0, 1), "prev_token_score"] == pytest.approx(1.0)
    chance = scores["chance"].iloc[0]
    assert 0 < chance < 0.2
    unplanted = scores.drop(index=[(1, 0)])
    assert (unplanted["needed_score"] < 3 * chance).all()  # untrained heads: near a uniform row
