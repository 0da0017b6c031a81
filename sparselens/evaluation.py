"""Held-out evaluation: loss per content type at several lengths, and indexer recall against dense attention.

Indexer recall of a DSA layer for query t: the share of the layer's dense attention mass (summed over heads and
L1-normalised, from `hook_dense_pattern`) that falls on the keys the indexer selected (`hook_topk`); averaged over
queries with t >= k, where selection is a real choice. The oracle is the mass on each query's own best k keys.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from sparselens.config import Preset
from sparselens.data.dataset import CONTENT_TYPES, stack_tokens, validation_samples
from sparselens.metrics import recall_per_query
from sparselens.models import capture
from sparselens.models.gpt import GPT
from sparselens.viz.markdown import Summary, markdown_table, records


def eval_lengths(preset: Preset) -> list[int]:
    return [preset.train.seq_len * m for m in preset.eval.length_multipliers]


def _batches(content_type: str, seq_len: int, n: int, batch_size: int):
    """Batches of up to n held-out samples: a text split may hold fewer disjoint windows (count the batch rows)."""
    samples = validation_samples(content_type, seq_len, n)
    for i in range(0, len(samples), batch_size):
        yield stack_tokens(samples[i : i + batch_size])  # [b, T + 1]


@torch.no_grad()
def loss_table(model: GPT, name: str, preset: Preset, run_id: str) -> pd.DataFrame:
    """Mean next-token loss (nats, and bits per byte) per content type and length.

    n_samples is the number of samples evaluated: `eval.n_samples`, or fewer where the held-out text holds fewer
    disjoint windows of the length (e.g. prose at 4096: nine).
    """
    rows = []
    for seq_len in eval_lengths(preset):
        for ct in CONTENT_TYPES:
            total, count, n_samples = 0.0, 0, 0
            for batch in _batches(ct, seq_len, preset.eval.n_samples, preset.eval.batch_size):
                logits = model(batch[:, :-1])  # [b, T, V]
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
                total, count, n_samples = total + nll.item(), count + batch[:, 1:].numel(), n_samples + batch.shape[0]
            loss = total / count
            rows.append(
                {
                    "run_id": run_id,
                    "model": name,
                    "content_type": ct,
                    "seq_len": seq_len,
                    "train_seq_len": preset.train.seq_len,
                    "length_ratio": seq_len / preset.train.seq_len,
                    "n_samples": n_samples,
                    "loss": loss,
                    "bits_per_byte": loss / math.log(2),
                }
            )
    return pd.DataFrame(rows)


@torch.no_grad()
def recall_table(model: GPT, name: str, preset: Preset, run_id: str) -> pd.DataFrame:
    """Indexer recall and oracle recall per content type, length and layer (queries t >= k)."""
    k, n_layers = model.cfg.topk, model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_dense_pattern" for i in range(n_layers)]
    names += [f"blocks.{i}.indexer.hook_topk" for i in range(n_layers)]
    rows = []
    for seq_len in eval_lengths(preset):
        for ct in CONTENT_TYPES:
            sums = torch.zeros(n_layers, 2, dtype=torch.float64)
            n_queries = 0
            for batch in _batches(ct, seq_len, preset.eval.recall_samples, preset.eval.batch_size):
                cache = capture(model, batch[:, :-1], names)
                for layer in range(n_layers):
                    recall, oracle = recall_per_query(cache[names[layer]], cache[names[n_layers + layer]])
                    sums[layer, 0] += recall[:, k:].sum().item()
                    sums[layer, 1] += oracle[:, k:].sum().item()
                n_queries += batch.shape[0] * max(0, seq_len - k)
            for layer in range(n_layers):
                rows.append(
                    {
                        "run_id": run_id,
                        "model": name,
                        "content_type": ct,
                        "seq_len": seq_len,
                        "layer": layer,
                        "topk": k,
                        "recall": (sums[layer, 0] / max(1, n_queries)).item(),
                        "oracle_recall": (sums[layer, 1] / max(1, n_queries)).item(),
                        "n_queries": n_queries,
                    }
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
        for batch in _batches(ct, preset.train.seq_len, n, preset.eval.batch_size):
            _, kl = model(batch[:, :-1], mode="dense_kl", return_kl=True)
            total, count = total + kl.item() * batch.shape[0], count + batch.shape[0]
    return total / count


def evaluate_run(store, preset: Preset) -> dict[str, pd.DataFrame]:
    """Evaluate the run's dense baseline and DSA model; writes and returns eval_loss and indexer_recall."""
    models = {name: store.load_model(name) for name in ("dense", "dsa")}
    losses = pd.concat([loss_table(m, n, preset, store.run_id) for n, m in models.items()], ignore_index=True)
    recall = recall_table(models["dsa"], "dsa", preset, store.run_id)
    store.write_table("eval_loss", losses)
    store.write_table("indexer_recall", recall)
    return {"eval_loss": losses, "indexer_recall": recall}


def summary(losses: pd.DataFrame, recall: pd.DataFrame, train_seq_len: int) -> pd.DataFrame:
    """Per content type at the training length: dense and DSA loss, their ratio, mean recall and oracle."""
    at_t = losses[losses.seq_len == train_seq_len].pivot(index="content_type", columns="model", values="loss")
    at_t["ratio"] = at_t["dsa"] / at_t["dense"]
    rec = recall[recall.seq_len == train_seq_len].groupby("content_type")[["recall", "oracle_recall"]].mean()
    return at_t.join(rec)


def evaluation_summary(run_id: str, preset: Preset, tables: dict[str, pd.DataFrame]) -> Summary:
    """What the evaluate phase publishes: loss ratio per content type at T and recall per length and layer."""
    table = summary(tables["eval_loss"], tables["indexer_recall"], preset.train.seq_len).reset_index()
    per_layer = tables["indexer_recall"].groupby(["seq_len", "layer"])[["recall", "oracle_recall"]].mean()
    return Summary(
        markdown=(
            f"# Evaluation of run `{run_id}`\n\nAt the training length T = {preset.train.seq_len}, "
            f"k = {preset.model.topk}:\n\n{markdown_table(table)}\n\n"
            f"Indexer recall per length and layer (mean over content types):\n\n"
            f"{markdown_table(per_layer.reset_index())}\n"
        ),
        description="DSA vs equal-step dense loss and indexer recall",
        tables={"eval-summary": records(table, 5)},
        result={"ratio_max": float(table["ratio"].max())},
    )
