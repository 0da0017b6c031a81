"""Held-out quality per content type and length: per-sample losses, so every comparison between models is paired.

For each (content type, length) every model sees the same validation samples; a model's row holds its mean loss
(t interval over samples) and bits per byte, and its difference and ratio to dense and to DSA come from a paired
bootstrap over those samples (`stats.paired_bootstrap`), so the interval reflects which samples were drawn, not
each model's own spread.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sparselens.benchmark.table import row
from sparselens.data.dataset import CONTENT_TYPES, stack_tokens, validation_samples
from sparselens.models.gpt import GPT
from sparselens.stats import Interval, mean_interval, paired_bootstrap

BASELINES = ("dense", "dsa")

Losses = dict[tuple[str, int], np.ndarray]  # (content type, length) -> per-sample mean loss [n], nats/token


@torch.no_grad()
def sample_losses(model: GPT, content_type: str, seq_len: int, n: int, batch_size: int) -> np.ndarray:
    """Mean next-token loss of each of up to n fixed validation samples: [n'] float64 (n' = windows available)."""
    samples = validation_samples(content_type, seq_len, n)
    out = []
    for i in range(0, len(samples), batch_size):
        batch = stack_tokens(samples[i : i + batch_size])  # [b, T + 1]
        logits = model(batch[:, :-1])  # [b, T, V]
        nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # [b, T]
        out.append(nll.mean(dim=1).double().numpy())
    return np.concatenate(out)


def model_losses(model: GPT, lengths: tuple[int, ...], n: int, batch_size: int) -> Losses:
    """Per-sample losses of one model at every content type and length."""
    return {(ct, t): sample_losses(model, ct, t, n, batch_size) for t in lengths for ct in CONTENT_TYPES}


def _scaled(interval: Interval, factor: float) -> Interval:
    return Interval(interval.value * factor, interval.low * factor, interval.high * factor, interval.n)


def quality_rows(losses: dict[str, Losses], families: dict[str, str], resamples: int) -> list[dict]:
    """Rows of loss, bits_per_byte and, against each baseline present, loss_diff_vs_* and loss_ratio_vs_*."""
    rows = []
    for name, per_cell in losses.items():
        family = families[name]
        for (ct, t), values in per_cell.items():
            mean = mean_interval(values)
            rows.append(row(name, family, "loss", t, mean, ct, interval="t95"))
            rows.append(row(name, family, "bits_per_byte", t, _scaled(mean, 1 / math.log(2)), ct, interval="t95"))
            for base in BASELINES:
                if base not in losses:
                    continue
                ref = losses[base][(ct, t)]
                diff = paired_bootstrap(values, ref, "diff", resamples)
                ratio = paired_bootstrap(values, ref, "ratio", resamples)
                rows.append(row(name, family, f"loss_diff_vs_{base}", t, diff, ct, interval="bootstrap95"))
                rows.append(row(name, family, f"loss_ratio_vs_{base}", t, ratio, ct, interval="bootstrap95"))
    return rows
