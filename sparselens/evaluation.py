"""Held-out evaluation: loss per content type at several lengths, and indexer recall against dense attention, each
with its 95% interval and the number of samples it rests on.

Indexer recall of a DSA layer for query t: the share of the layer's dense attention mass (summed over heads and
L1-normalised, from `hook_dense_pattern`) that falls on the keys the indexer selected (`hook_topk`); averaged over
queries with t >= k, where selection is a real choice. The oracle is the mass on each query's own best k keys.

Units of the intervals. Every number is first reduced to one value per validation sample (a sample's mean loss, its
mean recall over queries), and the interval is over samples: the queries of one sample are not independent. Loss
and recall get a t-interval of the mean (`stats.mean_interval`); the DSA/dense loss ratio a paired bootstrap over
the same samples under both models (`stats.paired_bootstrap`), so it reflects which samples were drawn, not each
model's own spread. Per-sample values are kept (`eval_loss_samples`, `indexer_recall_samples`) so any other
statistic can be recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sparselens.config import Preset
from sparselens.data.dataset import CONTENT_TYPES, stack_tokens, validation_samples
from sparselens.metrics import recall_per_query
from sparselens.models import capture
from sparselens.models.gpt import GPT
from sparselens.stats import Interval, mean_interval, paired_bootstrap
from sparselens.task_accuracy import task_accuracy_table

Progress = Callable[[int, int], None]  # (units done, units in all) of one evaluation
BOOTSTRAP = 1000  # paired-bootstrap resamples of each DSA/dense ratio


def eval_lengths(preset: Preset) -> list[int]:
    return [preset.train.seq_len * m for m in preset.eval.length_multipliers]


def _batches(content_type: str, seq_len: int, n: int, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(sample ids, batch [b, T + 1]) of up to n held-out samples: a text split may hold fewer disjoint windows."""
    samples = validation_samples(content_type, seq_len, n)
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        yield [s.sample_id for s in chunk], stack_tokens(chunk)  # [b, T + 1]


def _units(preset: Preset) -> list[tuple[int, str]]:
    return [(seq_len, ct) for seq_len in eval_lengths(preset) for ct in CONTENT_TYPES]


def evaluation_units(preset: Preset) -> int:
    """Units `evaluate_run` reports progress in: (length, content type) per model's loss, and per DSA recall."""
    return 3 * len(_units(preset))


@torch.no_grad()
def sample_losses(model: GPT, name: str, preset: Preset, run_id: str, progress: Progress | None = None) -> pd.DataFrame:
    """Mean next-token loss (nats) of every held-out sample: one row per (content type, length, sample)."""
    rows, units = [], _units(preset)
    for done, (seq_len, ct) in enumerate(units, 1):
        for ids, batch in _batches(ct, seq_len, preset.eval.n_samples, preset.eval.batch_size):
            logits = model(batch[:, :-1])  # [b, T, V]
            nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").mean(1)  # [b]
            rows += [
                {"run_id": run_id, "model": name, "content_type": ct, "seq_len": seq_len, "sample_id": i, "loss": v}
                for i, v in zip(ids, nll.double().tolist(), strict=True)
            ]
        if progress is not None:
            progress(done, len(units))
    return pd.DataFrame(rows)


def aggregate_losses(samples: pd.DataFrame, train_seq_len: int) -> pd.DataFrame:
    """eval_loss rows from per-sample losses: the mean (= mean over tokens, samples being of one length), its
    t-interval over samples, bits per byte and the sample count, per (model, content type, length)."""
    rows = []
    for (run_id, name, ct, seq_len), group in samples.groupby(
        ["run_id", "model", "content_type", "seq_len"], sort=False
    ):
        ci = mean_interval(group["loss"].to_numpy())
        rows.append(
            {
                "run_id": run_id,
                "model": name,
                "content_type": ct,
                "seq_len": seq_len,
                "train_seq_len": train_seq_len,
                "length_ratio": seq_len / train_seq_len,
                "n_samples": ci.n,
                "loss": ci.value,
                "bits_per_byte": ci.value / math.log(2),
                "loss_low": ci.low,
                "loss_high": ci.high,
            }
        )
    return pd.DataFrame(rows)


def loss_table(model: GPT, name: str, preset: Preset, run_id: str) -> pd.DataFrame:
    """Mean next-token loss (nats, and bits per byte) per content type and length, with its interval.

    n_samples is the number of samples evaluated: `eval.n_samples`, or fewer where the held-out text holds fewer
    disjoint windows of the length (e.g. prose at 4096: nine).
    """
    return aggregate_losses(sample_losses(model, name, preset, run_id), preset.train.seq_len)


@torch.no_grad()
def recall_samples(
    model: GPT, name: str, preset: Preset, run_id: str, progress: Progress | None = None
) -> pd.DataFrame:
    """Indexer and oracle recall of every held-out sample and layer (mean over the sample's queries t >= k)."""
    k, n_layers = model.cfg.topk, model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_dense_pattern" for i in range(n_layers)]
    names += [f"blocks.{i}.indexer.hook_topk" for i in range(n_layers)]
    rows, units = [], _units(preset)
    for done, (seq_len, ct) in enumerate(units, 1):
        for ids, batch in _batches(ct, seq_len, preset.eval.recall_samples, preset.eval.batch_size):
            cache = capture(model, batch[:, :-1], names)
            for layer in range(n_layers):
                recall, oracle = recall_per_query(cache[names[layer]], cache[names[n_layers + layer]])  # [b, T]
                rec, orc = recall[:, k:].double().mean(1).tolist(), oracle[:, k:].double().mean(1).tolist()  # t >= k
                per_sample = zip(ids, rec, orc, strict=True)
                rows += [
                    {
                        "run_id": run_id,
                        "model": name,
                        "content_type": ct,
                        "seq_len": seq_len,
                        "sample_id": i,
                        "layer": layer,
                        "recall": r,
                        "oracle_recall": o,
                        "n_queries": max(0, seq_len - k),
                    }
                    for i, r, o in per_sample
                ]
        if progress is not None:
            progress(done, len(units))
    return pd.DataFrame(rows)


def share_interval(values: np.ndarray) -> Interval:
    """`mean_interval` of per-sample shares (recall), its ends clipped to [0, 1] where few samples overshoot."""
    ci = mean_interval(values)
    return Interval(ci.value, max(0.0, ci.low), min(1.0, ci.high), ci.n) if ci.n > 1 else ci


def aggregate_recall(samples: pd.DataFrame, topk: int) -> pd.DataFrame:
    """indexer_recall rows from per-sample recall: per (content type, length, layer) the mean over queries t >= k
    (every sample has the same queries, so the mean of sample means) and its t-interval over samples."""
    rows = []
    for (run_id, name, ct, seq_len, layer), group in samples.groupby(
        ["run_id", "model", "content_type", "seq_len", "layer"], sort=False
    ):
        rec, orc = share_interval(group["recall"].to_numpy()), share_interval(group["oracle_recall"].to_numpy())
        rows.append(
            {
                "run_id": run_id,
                "model": name,
                "content_type": ct,
                "seq_len": seq_len,
                "layer": layer,
                "topk": topk,
                "recall": rec.value,
                "oracle_recall": orc.value,
                "n_queries": int(group["n_queries"].sum()),
                "recall_low": rec.low,
                "recall_high": rec.high,
                "oracle_low": orc.low,
                "oracle_high": orc.high,
                "n_samples": rec.n,
            }
        )
    return pd.DataFrame(rows)


def recall_table(model: GPT, name: str, preset: Preset, run_id: str) -> pd.DataFrame:
    """Indexer recall and oracle recall per content type, length and layer (queries t >= k), with intervals."""
    return aggregate_recall(recall_samples(model, name, preset, run_id), model.cfg.topk)


def summary_table(losses: pd.DataFrame, recall: pd.DataFrame, resamples: int = BOOTSTRAP) -> pd.DataFrame:
    """The headline numbers per (content type, length), from per-sample tables (`eval_summary`).

    Dense and DSA loss with t-intervals, their ratio with a paired bootstrap over the samples both models read, and
    indexer / oracle recall averaged over layers per sample, with a t-interval over samples.
    """
    paired = losses.pivot_table(
        index=["run_id", "content_type", "seq_len", "sample_id"], columns="model", values="loss"
    )
    layer_mean = recall.groupby(["content_type", "seq_len", "sample_id"])[["recall", "oracle_recall"]].mean()
    by_unit = dict(iter(layer_mean.reset_index().groupby(["content_type", "seq_len"])))
    empty = pd.DataFrame({"recall": [], "oracle_recall": []})
    rows = []
    for (run_id, ct, seq_len), group in paired.groupby(level=["run_id", "content_type", "seq_len"], sort=False):
        dense, dsa = group["dense"].to_numpy(), group["dsa"].to_numpy()
        d, s, r = mean_interval(dense), mean_interval(dsa), paired_bootstrap(dsa, dense, "ratio", resamples)
        per_sample = by_unit.get((ct, seq_len), empty)
        rec, orc = (
            share_interval(per_sample["recall"].to_numpy()),
            share_interval(per_sample["oracle_recall"].to_numpy()),
        )
        rows.append(
            {"run_id": run_id, "content_type": ct, "seq_len": seq_len, "n_samples": r.n}
            | {"dense_loss": d.value, "dense_low": d.low, "dense_high": d.high}
            | {"dsa_loss": s.value, "dsa_low": s.low, "dsa_high": s.high}
            | {"ratio": r.value, "ratio_low": r.low, "ratio_high": r.high, "n_recall_samples": rec.n}
            | {"recall": rec.value, "recall_low": rec.low, "recall_high": rec.high}
            | {"oracle_recall": orc.value, "oracle_low": orc.low, "oracle_high": orc.high}
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def indexer_kl(model: GPT, preset: Preset, n_samples: int | None = None) -> float:
    """Validation KL(p || softmax(I)) of a DSA model's indexers against its dense attention, at the training length.

    Mean over layers, queries and content types (the warm-up objective, measured on held-out samples).
    """
    n = n_samples or preset.eval.n_samples
    total, count = 0.0, 0
    for ct in CONTENT_TYPES:
        for _, batch in _batches(ct, preset.train.seq_len, n, preset.eval.batch_size):
            _, kl = model(batch[:, :-1], mode="dense_kl", return_kl=True)
            total, count = total + kl.item() * batch.shape[0], count + batch.shape[0]
    return total / count


def _shifted(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """A part's progress as progress of the whole: its units start at `offset` of `total`."""
    return None if progress is None else lambda done, _n: progress(offset + done, total)


def evaluate_run(store, preset: Preset, progress: Progress | None = None) -> dict[str, pd.DataFrame]:
    """Evaluate the run's dense baseline and DSA model; writes and returns eval_loss, eval_loss_samples,
    indexer_recall, indexer_recall_samples, eval_summary and eval_tasks (answer accuracy on the synthetic tasks).
    `progress(done, total)` counts (model, length, content type) units, recall included."""
    models = {name: store.load_model(name) for name in ("dense", "dsa")}
    n, total = len(_units(preset)), evaluation_units(preset)
    parts = [sample_losses(m, name, preset, store.run_id, _shifted(progress, i * n, total)) for i, (name, m) in
             enumerate(models.items())]  # fmt: skip
    losses = pd.concat(parts, ignore_index=True)
    recall = recall_samples(models["dsa"], "dsa", preset, store.run_id, _shifted(progress, 2 * n, total))
    lengths, n_samples, batch = eval_lengths(preset), preset.eval.n_samples, preset.eval.batch_size
    tasks = task_accuracy_table(models, lengths, n_samples, store.run_id, batch)  # answer accuracy per task
    tables = {
        "eval_loss": aggregate_losses(losses, preset.train.seq_len),
        "eval_loss_samples": losses,
        "indexer_recall": aggregate_recall(recall, preset.model.topk),
        "indexer_recall_samples": recall,
        "eval_summary": summary_table(losses, recall),
        "eval_tasks": tasks,
    }
    for name, table in tables.items():
        store.write_table(name, table)
    return tables


def read_task_accuracy(store) -> pd.DataFrame | None:
    """Adapter over the `eval_tasks` table (answer accuracy per synthetic task, written by the task-accuracy
    evaluation): model, content_type, seq_len, accuracy, low, high (95% Wilson interval over answer positions), n
    (answer positions), n_samples. None when the run has no such table (older runs, or before that evaluation)."""
    if not store.table_exists("eval_tasks"):
        return None
    tasks = store.read_table("eval_tasks")
    out = tasks.rename(columns={"ci_low": "low", "ci_high": "high", "n_answers": "n"})
    return out[["model", "content_type", "seq_len", "accuracy", "low", "high", "n", "n_samples"]]
