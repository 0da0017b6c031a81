"""Prefill and decode timings of several models in one process, interleaved so they share the machine's state.

Prefill: a fresh cache and one forward of L held-out tokens (what generation does first); one untimed warm-up per
model and length, then `repeats` rounds, each timing every model once in a rotating order.

Decode: one cache per model grown to each context in turn, then `warmup` untimed and `steps` timed one-token
steps per model, interleaved step by step. Long caches are stitched: the first `chunk` tokens are one real
prefill, every further stretch of `chunk` tokens is a separate prefill of another held-out window whose K/V and
indexer keys are appended as they are. A decode step's cost depends on the cache's size and the keys it selects,
not on whether far positions agree with one long prefill, and the stitched fill costs O(context x chunk) instead of
O(context^2) (a 32K dense prefill with a cached prefix takes minutes here). Timings only: no quality is claimed at
these contexts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from sparselens.data.dataset import validation_samples
from sparselens.models.cache import DecodeCache
from sparselens.models.gpt import GPT

Timings = dict[tuple[str, int], list[float]]  # (model, length) -> milliseconds


def held_out_tokens(length: int, count: int = 1, content_type: str = "code") -> list[torch.Tensor]:
    """`count` disjoint held-out windows of `length` tokens, each int64 [1, length]."""
    samples = validation_samples(content_type, length, count)
    if len(samples) < count:
        raise ValueError(f"the {content_type!r} validation split holds {len(samples)} windows of {length}, not {count}")
    return [torch.from_numpy(s.tokens[:length]).view(1, length) for s in samples]


def _rotated(names: list[str], shift: int) -> list[str]:
    shift %= len(names)
    return names[shift:] + names[:shift]


@torch.no_grad()
def time_prefill(models: dict[str, GPT], lengths: Iterable[int], repeats: int) -> Timings:
    """Milliseconds of a prefill of each length through a fresh cache, `repeats` per (model, length)."""
    out: Timings = {}
    names = list(models)
    for length in lengths:
        tokens = held_out_tokens(length)[0]  # [1, L]
        for name in names:
            models[name](tokens, cache=models[name].new_cache(1))  # warm-up, excluded
        for r in range(repeats):
            for name in _rotated(names, r):
                cache = models[name].new_cache(1)
                t0 = time.perf_counter()
                models[name](tokens, cache=cache)
                out.setdefault((name, length), []).append((time.perf_counter() - t0) * 1e3)
    return out


@torch.no_grad()
def fill_cache(model: GPT, cache: DecodeCache, target: int, windows: list[torch.Tensor], chunk: int) -> None:
    """Grow `cache` to `target` positions: a real prefill while it is empty, stitched prefills after (docstring)."""
    used = 0
    while cache.length < target:
        n = min(chunk, target - cache.length)
        tokens = windows[used % len(windows)][:, :n]  # [1, n]
        used += 1
        if cache.length == 0:
            model(tokens, cache=cache)
            continue
        piece = model.new_cache(1)
        model(tokens, cache=piece)
        limit, at = cache.cfg.max_seq_len, cache.length
        for dst, src in zip(cache.layers, piece.layers, strict=True):
            dst.append_kv(src.k.buf[:, :n], src.v.buf[:, :n], at, limit)  # [1, n, HKV, D] after RoPE
            if src.index_k.buf is not None:
                dst.append_index_keys(src.index_k.buf[:, :n], at, limit)  # [1, n, DI]
        cache.length += n


@torch.no_grad()
def time_decode(models: dict[str, GPT], contexts: Iterable[int], steps: int, warmup: int, chunk: int) -> Timings:
    """Milliseconds of each timed one-token decode step at each context, `steps` per (model, context)."""
    contexts = sorted(contexts)
    names = list(models)
    fill_windows = held_out_tokens(chunk, -(-contexts[-1] // chunk) + 1)
    step_tokens = held_out_tokens(warmup + steps, 1, "prose")[0]  # [1, warmup + steps]
    caches = {name: models[name].new_cache(1) for name in names}
    out: Timings = {}
    for context in contexts:
        for name in names:
            fill_cache(models[name], caches[name], context, fill_windows, chunk)
        for j in range(warmup + steps):
            token = step_tokens[:, j : j + 1]  # [1, 1]
            for name in _rotated(names, j):
                t0 = time.perf_counter()
                models[name](token, cache=caches[name])
                if j >= warmup:
                    out.setdefault((name, context), []).append((time.perf_counter() - t0) * 1e3)
    return out
