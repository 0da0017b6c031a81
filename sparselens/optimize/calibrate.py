"""Calibration for Phase 3's designers: how the DSA model's layers select, measured on the training split.

Designers never look at the validation samples that results are reported on: they calibrate on batches of the
training split drawn from a seed stream of their own (`calibration_batches`). Per content type and layer,
over queries t >= k (where the selection is a real choice), with p the layer's dense attention summed over heads
and L1-normalised (what dense attention would read, given the sparse model's hidden states):
- `recall`: mass of p on the layer's own selection; `oracle`: mass on the k heaviest keys of p;
- `mass_overlap[i, j]`: mass of layer i's p on layer j's selection (how well j's top-k would serve i);
- `count_overlap[i, j]`: |S_i intersect S_j| / k (IndexCache's selection overlap);
- `sink_window[s]`: mass of p on s sink keys plus the k - s most recent keys (a static layer of the same budget);
- `head_drop[j]`: recall lost when indexer head j is removed from the score (per-indexer-head contribution),
  and `head_share[j]`: head j's share of the indexer score at the selected keys.
Content types are kept apart and pooled with equal weight, so a retrieval task counts as much as prose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sparselens.config import Preset
from sparselens.data.dataset import CONTENT_TYPES, train_batch
from sparselens.data.synthetic import MAX_SEED
from sparselens.kernels import topk_indices
from sparselens.masks import causal_mask
from sparselens.models import capture
from sparselens.models.gpt import GPT

CALIBRATION_SEED = 7919  # added to train.seed: a training-split stream no training step draws from
SINK_CHOICES = (0, 1, 2, 4, 8, 16)  # sink counts a static layer is tried with (window = budget - sinks)


def calibration_batches(preset: Preset, n: int, seq_len: int | None = None) -> dict[str, torch.Tensor]:
    """{content type: tokens int64 [n, T + 1]} from the training split, apart from training's own batches."""
    t = seq_len or preset.train.seq_len
    seed = (preset.train.seed + CALIBRATION_SEED) % MAX_SEED
    return {ct: train_batch({ct: 1.0}, t, n, seed=seed, step=i)[0] for i, ct in enumerate(CONTENT_TYPES)}


@dataclass
class Calibration:
    """Per content type, arrays over layers (numpy, float64); see the module docstring for each statistic."""

    topk: int
    sparse_layers: list[int]
    recall: dict[str, np.ndarray]  # [L]
    oracle: dict[str, np.ndarray]  # [L]
    mass_overlap: dict[str, np.ndarray]  # [L, L]
    count_overlap: dict[str, np.ndarray]  # [L, L]
    sink_window: dict[str, np.ndarray]  # [L, len(SINK_CHOICES)]
    head_drop: dict[str, dict[int, np.ndarray]]  # layer -> [HI]
    head_share: dict[str, dict[int, np.ndarray]]  # layer -> [HI]

    def pooled(self, name: str) -> np.ndarray:
        """A statistic averaged over content types with equal weight."""
        return np.mean([getattr(self, name)[ct] for ct in getattr(self, name)], axis=0)

    def worst(self, name: str) -> np.ndarray:
        """A statistic's minimum over content types (what the hardest content type sees)."""
        return np.min([getattr(self, name)[ct] for ct in getattr(self, name)], axis=0)

    def tidy(self) -> pd.DataFrame:
        """One row per (content_type, statistic, layer, other): other is a layer, a sink count or a head."""
        rows = []
        for ct in self.recall:
            for layer in self.sparse_layers:
                rows.append((ct, "recall", layer, -1, self.recall[ct][layer]))
                rows.append((ct, "oracle", layer, -1, self.oracle[ct][layer]))
                for other in self.sparse_layers:
                    rows.append((ct, "mass_overlap", layer, other, self.mass_overlap[ct][layer, other]))
                    rows.append((ct, "count_overlap", layer, other, self.count_overlap[ct][layer, other]))
                cover = self.sink_window[ct][layer]
                rows += [(ct, "sink_window", layer, s, v) for s, v in zip(SINK_CHOICES, cover, strict=True)]
            for layer, drops in self.head_drop[ct].items():
                rows += [(ct, "head_drop", layer, j, v) for j, v in enumerate(drops)]
                rows += [(ct, "head_share", layer, j, v) for j, v in enumerate(self.head_share[ct][layer])]
        return pd.DataFrame(rows, columns=["content_type", "statistic", "layer", "other", "value"])


def _mass_on(p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """p [B, T, S] summed over idx [B, T, k] (-1 ignored): [B, T]."""
    return (torch.gather(p, -1, idx.clamp(min=0)) * (idx >= 0)).sum(-1)


def _sink_window_mass(p: torch.Tensor, k: int) -> torch.Tensor:
    """Mass on s sinks + (k - s) most recent keys for each s of SINK_CHOICES below k: [len(SINK_CHOICES), B, T]."""
    t, s = p.shape[-2], p.shape[-1]
    pos = torch.arange(s - t, s)[:, None]  # [T, 1] query positions
    keys = torch.arange(s)[None, :]  # [1, S]
    out = []
    for sinks in SINK_CHOICES:
        window = max(k - sinks, 1)
        keep = (keys < min(sinks, k - 1)) | ((keys > pos - window) & (keys <= pos))  # [T, S]
        out.append((p * keep).sum(-1))
    return torch.stack(out)


def _layer_names(model: GPT) -> list[str]:
    names = []
    for i, block in enumerate(model.blocks):
        if block.attn.plan.sparse:
            names += [f"blocks.{i}.attn.hook_dense_pattern", f"blocks.{i}.attn.hook_selection"]
        if block.indexer is not None:
            names += [f"blocks.{i}.indexer.hook_head_scores"]
    return names


def _head_stats(head_scores: torch.Tensor, idx: torch.Tensor, p: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
    """Per indexer head: recall lost without it, and its share of the score at the selected keys (queries >= k)."""
    scores = head_scores.nan_to_num(neginf=0.0)  # [B, HI, T, S], future keys 0 here and masked below
    total = scores.sum(1)  # [B, T, S]
    future = ~causal_mask(total.shape[1], total.shape[2], total.device)
    base = _mass_on(p, idx)[:, k:].mean().item()
    picked = torch.gather(scores, -1, idx.clamp(min=0).unsqueeze(1).expand(-1, scores.shape[1], -1, -1))
    picked = picked * (idx >= 0).unsqueeze(1)  # [B, HI, T, k]
    share = picked.sum(-1)[..., k:] / picked.sum((1, 3))[:, None, k:].clamp_min(1e-30)  # [B, HI, T - k]
    drops = []
    for j in range(scores.shape[1]):
        without = (total - scores[:, j]).masked_fill(future, float("-inf"))  # [B, T, S]
        sel = topk_indices(without, k, backend="reference")
        drops.append(base - _mass_on(p, sel)[:, k:].mean().item())
    return np.array(drops), share.mean((0, 2)).numpy()


@torch.no_grad()
def calibrate(model: GPT, batches: dict[str, torch.Tensor]) -> Calibration:
    """Run the DSA `model` (sparse mode) over the calibration batches and measure every statistic above."""
    cfg, k, n_layers = model.cfg, model.cfg.topk, model.cfg.n_layers
    sparse = [i for i in range(n_layers) if cfg.layer_plan(i).sparse]
    names = [name for name in Calibration.__dataclass_fields__ if name not in ("topk", "sparse_layers")]
    stats: dict[str, dict] = {name: {} for name in names}
    for ct, tokens in batches.items():
        c = capture(model, tokens[:, :-1], _layer_names(model))
        p = {i: F.normalize(c[f"blocks.{i}.attn.hook_dense_pattern"].sum(1), p=1, dim=-1) for i in sparse}  # [B, T, S]
        sel = {i: c[f"blocks.{i}.attn.hook_selection"] for i in sparse}  # [B, T, k]
        mass = np.zeros((n_layers, n_layers))
        count = np.zeros((n_layers, n_layers))
        sink_window = np.zeros((n_layers, len(SINK_CHOICES)))
        oracle = np.zeros(n_layers)
        for i in sparse:
            oracle[i] = p[i].topk(k, dim=-1).values.sum(-1)[:, k:].mean().item()
            sink_window[i] = _sink_window_mass(p[i], k)[..., k:].mean((1, 2)).numpy()
            for j in sparse:
                mass[i, j] = _mass_on(p[i], sel[j])[:, k:].mean().item()
                same = (sel[i].unsqueeze(-1) == sel[j].unsqueeze(-2)) & (sel[i] >= 0).unsqueeze(-1)  # [B, T, k, k]
                count[i, j] = same.any(-1).sum(-1)[:, k:].float().mean().item() / k
        stats["recall"][ct] = np.diag(mass).copy()
        stats["oracle"][ct], stats["mass_overlap"][ct], stats["count_overlap"][ct] = oracle, mass, count
        stats["sink_window"][ct] = sink_window
        stats["head_drop"][ct], stats["head_share"][ct] = {}, {}
        for i in sparse:
            name = f"blocks.{i}.indexer.hook_head_scores"
            if name in c:
                drop, share = _head_stats(c[name], sel[i], p[i], k)
                stats["head_drop"][ct][i], stats["head_share"][ct][i] = drop, share
    return Calibration(topk=k, sparse_layers=sparse, **stats)


@torch.no_grad()
def calibration_loss(model: GPT, batches: dict[str, torch.Tensor], mode: str = "sparse") -> dict[str, float]:
    """Mean next-token loss (nats) per content type on the calibration batches."""
    out = {}
    for ct, tokens in batches.items():
        logits = model(tokens[:, :-1], mode=mode)  # [B, T, V]
        out[ct] = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:]).item()
    return out
