"""Measuring Phase 3's models side by side: held-out loss with paired intervals, recall of dense attention mass,
analytic cost, and the clock (whole-model forward and attention + indexer time), all in one process.

Losses are per sample (the mean next-token loss of one validation sample), so two models compare on the same
samples with a paired bootstrap. Timings interleave the models (one forward of each, round after round) at fixed
threads, after a warm-up round, and report medians; they run on copies built with a larger max_seq_len (RoPE is
computed on the fly, so weights carry over; quality is not claimed at those lengths).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sparselens.data.dataset import CONTENT_TYPES, stack_tokens, validation_samples
from sparselens.models import build_model, capture
from sparselens.models.gpt import GPT
from sparselens.stats import mean_interval, paired_bootstrap


@torch.no_grad()
def per_sample_losses(
    model: GPT, content_type: str, seq_len: int, n: int, batch_size: int = 8, mode: str = "sparse"
) -> np.ndarray:
    """Mean next-token loss (nats) of each of up to n validation samples: [n_found] (fewer for short text splits)."""
    samples = validation_samples(content_type, seq_len, n)
    out = []
    for i in range(0, len(samples), batch_size):
        batch = stack_tokens(samples[i : i + batch_size])  # [b, T + 1]
        logits = model(batch[:, :-1], mode=mode)  # [b, T, V]
        nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # [b, T]
        out.append(nll.mean(1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def quality_table(
    losses: Mapping[str, Mapping[tuple[str, int], np.ndarray]], against: tuple[str, ...], resamples: int = 1000
) -> pd.DataFrame:
    """Rows per (model, content_type, seq_len): mean loss with its interval, and the paired loss ratio to each
    model of `against` (e.g. "reference", "dsa", "dense") with its 95% bootstrap interval over the same samples."""
    rows = []
    for name, by_key in losses.items():
        for (ct, seq_len), x in by_key.items():
            iv = mean_interval(x)
            row = {"model": name, "content_type": ct, "seq_len": seq_len, "n_samples": iv.n, "loss": iv.value}
            row |= {"loss_low": iv.low, "loss_high": iv.high}
            for other in against:
                if other in losses and (ct, seq_len) in losses[other]:
                    r = paired_bootstrap(x, losses[other][(ct, seq_len)], "ratio", resamples)
                    row |= {f"ratio_{other}": r.value, f"ratio_{other}_low": r.low, f"ratio_{other}_high": r.high}
            rows.append(row)
    return pd.DataFrame(rows)


@torch.no_grad()
def dense_mass_recall(model: GPT, tokens: torch.Tensor) -> dict[int, float]:
    """Per sparse layer, the mean over queries t >= its budget of the dense attention mass (summed over heads,
    L1-normalised) on the keys it read; tokens [B, T]."""
    layers = [i for i, b in enumerate(model.blocks) if b.attn.plan.sparse]
    names = [f"blocks.{i}.attn.{h}" for i in layers for h in ("hook_dense_pattern", "hook_selection")]
    c = capture(model, tokens, names)
    out = {}
    for i in layers:
        p = F.normalize(c[f"blocks.{i}.attn.hook_dense_pattern"].sum(1), p=1, dim=-1)  # [B, T, S]
        idx = c[f"blocks.{i}.attn.hook_selection"]  # [B, T, k]
        picked = (torch.gather(p, -1, idx.clamp(min=0)) * (idx >= 0)).sum(-1)  # [B, T]
        out[i] = picked[:, idx.shape[-1] :].mean().item()
    return out


def with_max_len(model: GPT, max_seq_len: int) -> GPT:
    """A copy of `model` accepting sequences up to max_seq_len (same weights; RoPE is computed on the fly)."""
    if model.cfg.max_seq_len >= max_seq_len:
        return model
    copy = build_model(model.cfg.replace(max_seq_len=max_seq_len))
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def _attention_timer(model: GPT) -> tuple[list[float], list]:
    """Hooks that add the wall time spent inside every block's attention module (indexer included) to a list."""
    spent, handles, start = [0.0], [], {}
    for block in model.blocks:
        handles.append(block.attn.register_forward_pre_hook(lambda m, a: start.__setitem__(m, time.perf_counter())))
        handles.append(
            block.attn.register_forward_hook(
                lambda m, a, o: spent.__setitem__(0, spent[0] + time.perf_counter() - start[m])
            )
        )
    return spent, handles


@torch.no_grad()
def interleaved_times(
    models: Mapping[str, GPT], length: int, repeats: int, attention_only: bool = False, seed: int = 0
) -> dict[str, list[float]]:
    """Milliseconds per forward of batch 1 at `length` for each model, interleaved round by round (warm-up round
    excluded); with attention_only, only the time inside the attention modules (indexer, selection, kernels)."""
    tokens = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))
    ready = {name: with_max_len(m, length) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in ready}
    for round_ in range(repeats + 1):
        for name, model in ready.items():
            spent, handles = _attention_timer(model) if attention_only else ([0.0], [])
            t0 = time.perf_counter()
            model(tokens)
            elapsed = time.perf_counter() - t0
            for h in handles:
                h.remove()
            if round_ > 0:
                times[name].append(1e3 * (spent[0] if attention_only else elapsed))
    return times


def evaluation_lengths(preset) -> list[int]:
    return [preset.train.seq_len * m for m in preset.eval.length_multipliers]


def all_losses(
    models: Mapping[str, GPT], preset, n: int, modes: Mapping[str, str] | None = None
) -> dict[str, dict[tuple[str, int], np.ndarray]]:
    """Per-sample validation losses of every model, content type and evaluation length (T, 2T, 4T); `modes`
    gives a model's forward mode (e.g. {"oracle": "oracle"}), "sparse" otherwise."""
    out = {}
    for name, model in models.items():
        mode = (modes or {}).get(name, "sparse")
        out[name] = {
            (ct, t): per_sample_losses(model, ct, t, n, preset.eval.batch_size, mode)
            for t in evaluation_lengths(preset)
            for ct in CONTENT_TYPES
        }
    return out
