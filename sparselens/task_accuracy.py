"""Does a model solve the synthetic tasks? Answer accuracy with Wilson intervals, and which heads do the copying.

A task's answer positions are the targets its ground truth ties to earlier keys: exactly the positions t with a
non-empty ``needed[t]`` (the target ``tokens[t + 1]`` follows from keys the model can see). Per task that is
- ``induction``: every byte of a repeated span after its first one (the first follows a random gap);
- ``assoc_recall``: the value bytes of the queries;
- ``brackets``: the closing brackets (whether a bracket closes is random; which one closes is not).
A position counts as correct when the model's most probable next byte (argmax over all 256) is the target.
`tests/unit/test_task_accuracy.py` checks these sets against independent parses of the samples.

The 95% interval is Wilson's score interval over answer positions. Positions of one sample are not independent
(a model that fails a span fails many of its bytes), so the table also carries the number of samples and the
spread of per-sample accuracies; read the interval as a floor on the real uncertainty.

Copy heads: the TransformerLens induction detector, on the induction task's varied spans and gaps instead of one
fixed repeat: per head, the attention mass from each answer query to its needed key (the byte after the earlier
occurrence of the query's byte), beside the mass on the previous position (previous-token heads, the first half of
the induction circuit) and the chance level of a uniform row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sparselens.data.dataset import Sample, stack_tokens, validation_samples
from sparselens.data.synthetic import TASKS, TaskDesign, flatten_needed
from sparselens.models import capture
from sparselens.models.gpt import GPT
from sparselens.stats import wilson


def answer_mask(sample: Sample) -> np.ndarray:
    """bool [T]: the input positions t whose target tokens[t + 1] is an answer (needed[t] non-empty)."""
    if sample.needed is None:
        raise ValueError(
            f"sample {sample.sample_id!r} ({sample.content_type}) has no ground truth; use a task of {TASKS}"
        )
    return np.array([len(keys) > 0 for keys in sample.needed], dtype=bool)  # [T]


@torch.no_grad()
def answer_hits(model: GPT, samples: list[Sample], batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sample: (correct bool [A], nll float [A]) at its A answer positions, in position order."""
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        tokens = stack_tokens(chunk)  # [b, T + 1]
        logits = model(tokens[:, :-1])  # [b, T, V]
        targets = tokens[:, 1:]  # [b, T]
        correct = (logits.argmax(-1) == targets).numpy()  # [b, T]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").numpy()  # [b, T]
        for row, sample in enumerate(chunk):
            mask = answer_mask(sample)
            out.append((correct[row, mask], nll[row, mask]))
    return out


def accuracy_record(hits: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Accuracy, its Wilson interval, counts, answer loss and the per-sample spread from `answer_hits` output."""
    correct = np.concatenate([c for c, _ in hits]) if hits else np.zeros(0, dtype=bool)
    nll = np.concatenate([n for _, n in hits]) if hits else np.zeros(0)
    per_sample = [c.mean() for c, _ in hits if c.size]
    n, k = int(correct.size), int(correct.sum())
    interval = wilson(k, n)
    return {
        "n_samples": len(hits),
        "n_answers": n,
        "n_correct": k,
        "accuracy": k / n if n else math.nan,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "sample_acc_sd": float(np.std(per_sample, ddof=1)) if len(per_sample) > 1 else math.nan,
        "answer_loss": float(nll.mean()) if n else math.nan,
    }


def task_accuracy(
    model: GPT, task: str, seq_len: int, n_samples: int, batch_size: int = 8, design: TaskDesign | None = None
) -> dict:
    """Answer accuracy of `model` on `n_samples` held-out samples of `task` at `seq_len` (see `accuracy_record`)."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; valid tasks are {TASKS}")
    samples = validation_samples(task, seq_len, n_samples, design=design)
    return accuracy_record(answer_hits(model, samples, batch_size))


def task_accuracy_table(
    models: Mapping[str, GPT], seq_lens: list[int], n_samples: int, run_id: str, batch_size: int = 8
) -> pd.DataFrame:
    """The `eval_tasks` table: one row per (model, task, seq_len) with accuracy, Wilson interval and counts."""
    rows = []
    for name, model in models.items():
        for seq_len in seq_lens:
            for task in TASKS:
                record = task_accuracy(model, task, seq_len, n_samples, batch_size)
                rows.append({"run_id": run_id, "model": name, "content_type": task, "seq_len": seq_len, **record})
    return pd.DataFrame(rows)


@torch.no_grad()
def copy_head_scores(
    model: GPT, task: str, seq_len: int, n_samples: int, batch_size: int = 4, design: TaskDesign | None = None
) -> pd.DataFrame:
    """Per (layer, head): attention mass on the needed keys at answer queries, on the previous position, and chance.

    Columns: layer, head, needed_score (mean over answer queries t of the mass on needed[t]; on induction the
    induction score), prev_token_score (mean over queries t >= 1 of the mass on t - 1), chance (mean of
    |needed[t]| / (t + 1), what a uniform row puts on the needed keys), n_queries (answer queries averaged).
    """
    samples = validation_samples(task, seq_len, n_samples, design=design)
    n_layers = model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    needed_sum = torch.zeros(n_layers, model.cfg.n_heads, dtype=torch.float64)
    prev_sum = torch.zeros_like(needed_sum)
    n_answers, n_prev, chance = 0, 0, 0.0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        cache = capture(model, stack_tokens(chunk)[:, :-1], names)
        for row, sample in enumerate(chunk):
            q_pos, k_pos = _needed_pairs(sample)
            for layer, name in enumerate(names):
                pattern = cache[name][row].double()  # [H, T, S]
                needed_sum[layer] += pattern[:, q_pos, k_pos].sum(-1)  # [H]
                prev_sum[layer] += pattern.diagonal(offset=-1, dim1=1, dim2=2).sum(-1)
            queries = np.unique(q_pos.numpy())
            n_answers += queries.size
            chance += float(sum(len(sample.needed[t]) / (t + 1) for t in queries))
            n_prev += sample.seq_len - 1
    rows = []
    for layer in range(n_layers):
        for head in range(model.cfg.n_heads):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "needed_score": (needed_sum[layer, head] / max(1, n_answers)).item(),
                    "prev_token_score": (prev_sum[layer, head] / max(1, n_prev)).item(),
                    "chance": chance / max(1, n_answers),
                    "n_queries": n_answers,
                }
            )
    return pd.DataFrame(rows)


def _needed_pairs(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(query positions [N], key positions [N]): every (answer query, needed key) pair of a sample."""
    q_pos, k_pos = flatten_needed(sample.needed)
    return torch.from_numpy(q_pos), torch.from_numpy(k_pos)
