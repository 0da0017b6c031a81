"""Causal validation of a fitted pattern: replace one head's attention with the pattern and measure the loss change.

`replaced_head(model, layer, head, mask)` is a context manager that, for every forward pass inside it, swaps the
output of one attention head for attention restricted to ``mask``: ``softmax`` of the head's own scores over the
mask's keys only (a query whose mask row is empty gets zeros, as sparse attention does for a query with no valid
index). Everything else (other heads, the DSA indexer's selection for the other heads) is untouched.

It needs no change to `sparselens.models`: two forward hooks, removed on exit, do the work. One on the layer's
``hook_pattern`` keeps the probabilities the head actually used (``p_old``, [B, T, S], dense or sparse); one on the
Attention module recomputes the head's q, k, v from the module's own weights and adds
``proj[:, head] @ ((p_new - p_old) @ v_head)`` to the layer output, which equals recomputing the head with the new
probabilities because the output projection is linear. A cleaner model API would be an optional per-head mask on
`Attention` (``attn.head_masks: dict[int, Tensor[T, S] | Callable]``, applied inside `_dense` / `_sparse` before
the softmax), so no second pass over q, k, v is needed.

``mask`` is a bool tensor [T, S] (a static pattern, broadcast over the batch) or a callable
``p_old[B, T, S] -> bool[B, T, S]`` for query-dependent patterns (``scattered``: each query's own top keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from sparselens.analysis.masks import pattern_mask
from sparselens.analysis.patterns import PatternFit
from sparselens.masks import causal_mask
from sparselens.models.attention import expand_kv

Mask = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def replaced_head(model: torch.nn.Module, layer: int, head: int, mask: Mask) -> Iterator[None]:
    """Within the block, head ``head`` of layer ``layer`` attends only to ``mask``'s keys (module docstring)."""
    attn = model.blocks[layer].attn
    n_heads, head_dim = model.cfg.n_heads, model.cfg.head_dim
    if not 0 <= head < n_heads:
        raise ValueError(f"head {head} does not exist: layer {layer} has heads 0..{n_heads - 1}")
    used: dict[str, torch.Tensor] = {}

    def keep_pattern(_module, _inputs, probs: torch.Tensor) -> None:
        used["p"] = probs[:, head]  # [B, T, S] probabilities the head used

    def replace(_module, args, output):
        h, state = args[0], args[1]  # h [B, T, d]; the forward's ForwardState (positions, RoPE)
        y, kl = output
        b, t, _ = h.shape
        q, k, v = attn.project(h, state)  # q [B, T, H, D], k/v [B, T, HKV, D] after RoPE
        k, v = expand_kv(k, n_heads), expand_kv(v, n_heads)  # [B, T, H, D]
        qh, kh = q[:, :, head], k[:, :, head]  # [B, T, D], [B, S, D]
        p_old = used.pop("p")
        allowed = mask(p_old) if callable(mask) else mask.to(h.device).expand(b, -1, -1)  # [B, T, S]
        allowed = allowed & causal_mask(t, t, h.device)  # [B, T, S]
        scores = torch.einsum("btd,bsd->bts", qh, kh) * attn.scale  # [B, T, S]
        p_new = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        p_new = torch.where(allowed.any(-1, keepdim=True), p_new, torch.zeros_like(p_new))
        delta = torch.einsum("bts,bsd->btd", p_new - p_old, v[:, :, head])  # [B, T, D]
        w_head = attn.proj.weight[:, head * head_dim : (head + 1) * head_dim]  # [d, D]
        return y + delta @ w_head.T, kl

    handles = [attn.hook_pattern.register_forward_hook(keep_pattern), attn.register_forward_hook(replace)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def topk_mask(keys_per_query: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Query-dependent mask: each query's ``keys_per_query`` heaviest keys of the head's own probabilities."""

    def mask(p_old: torch.Tensor) -> torch.Tensor:  # [B, T, S] -> bool [B, T, S]
        top = p_old.topk(min(keys_per_query, p_old.shape[-1]), dim=-1).indices  # [B, T, k]
        return torch.zeros_like(p_old, dtype=torch.bool).scatter_(-1, top, True) & (p_old > 0)

    return mask


def per_sample_mask(masks: list[Mask | None]) -> Callable[[torch.Tensor], torch.Tensor]:
    """One mask per batch sample (None: keep what the head used, i.e. no change) as a query-dependent mask."""

    def mask(p_old: torch.Tensor) -> torch.Tensor:  # [B, T, S] -> bool [B, T, S]
        if len(masks) != p_old.shape[0]:
            raise ValueError(f"per_sample_mask has {len(masks)} masks for a batch of {p_old.shape[0]}")
        rows = []
        for b, m in enumerate(masks):
            one = p_old[b : b + 1]  # [1, T, S]
            rows.append(one > 0 if m is None else m(one) if callable(m) else m.to(one.device).unsqueeze(0))
        return torch.cat(rows)

    return mask


def fit_mask(fit: PatternFit, seq_len: int) -> Mask | None:
    """The mask that stands for a fitted pattern at ``seq_len``; None for ``broad`` (nothing sparse to apply)."""
    if fit.kind == "broad":
        return None
    if fit.kind == "scattered":
        return topk_mask(int(fit.params["keys_per_query"]))
    return torch.from_numpy(pattern_mask(fit.kind, fit.params, seq_len, seq_len))  # [T, T]


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Per-sample mean next-token loss (nats) of ``batch[B, T + 1]``: [B]."""
    logits = model(batch[:, :-1])  # [B, T, V]
    nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # [B, T]
    return nll.mean(1)
