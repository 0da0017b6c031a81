"""Causal self-attention of one layer, as its LayerPlan says: dense (SDPA), or sparse over a selection of keys.

A sparse layer's selection comes from its own lightning indexer (`indexer`), from an earlier layer (`shared`) or
from positions alone (`static`: sinks + window); attention then gathers only the selected keys through
`kernels.sparse_attention`, never dense attention plus a mask. K/V may be shared by groups of query heads
(`n_kv_heads` < `n_heads`; query head h reads K/V head h // (H / HKV)).

Modes (set per forward call) of a model with indexers:
- "sparse": the model as deployed.
- "dense_kl": indexer warm-up; every layer attends densely and each indexer layer returns KL(p || softmax(I)),
  p the main attention summed over heads and L1-normalised.
- "sparse_kl": sparse stage; sparse attention plus, per indexer layer, KL(p_S || softmax(I_S)) restricted to its
  selected set S.
- "oracle": evaluation only; every sparse layer reads the k keys (its budget) that hold the most of its own dense
  attention mass (summed over heads): the best any selector of that budget could do, an upper bound for designs.
The indexer always reads a detached hidden state: it learns from its KL only, the main model from the LM loss.
With a decode cache, K/V (after RoPE) and indexer keys of the new positions are appended to it first, and the new
queries attend over everything cached (query t of T at key position S - T + t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparselens import kernels
from sparselens.config import LayerPlan, ModelConfig
from sparselens.masks import causal_mask
from sparselens.models.hooks import HookPoint
from sparselens.models.indexer import Indexer, selected_dots
from sparselens.models.rope import apply_rope
from sparselens.models.selection import sink_window_indices
from sparselens.models.state import MODES, ForwardState


def kl_to_target(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over queries of KL(p || softmax(logits)); p[..., S] sums to 1, logits -inf where p must be 0."""
    logq = torch.log_softmax(logits, dim=-1)
    logq = torch.where(p > 0, logq, torch.zeros_like(logq))
    return (torch.xlogy(p, p) - p * logq).sum(-1).mean()


def expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, S, HKV, D] -> [B, S, H, D], each K/V head repeated for the H / HKV query heads of its group."""
    return x if x.shape[2] == n_heads else x.repeat_interleave(n_heads // x.shape[2], dim=2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer, self.plan = cfg, layer, cfg.layer_plan(layer)
        self.kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, cfg.d_model + 2 * self.kv_dim, bias=False)  # MHA: [3d, d] as before
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.scale = cfg.head_dim**-0.5
        self.hook_attn_scores = HookPoint("[B, H, Q, K] pre-softmax scores, -inf where not looked at")
        self.hook_pattern = HookPoint("[B, H, Q, K] probabilities used, zeros where a sparse layer did not look")
        if self.plan.sparse:
            self.hook_dense_pattern = HookPoint("[B, H, Q, K] what dense softmax attention would have been")
            self.hook_selection = HookPoint("[B, Q, k] int64 keys this layer attended to, -1 = none")

    def project(self, h: torch.Tensor, state: ForwardState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h[B, T, d] -> q [B, T, H, D], k and v [B, T, HKV, D]; RoPE on q and k at the state's positions."""
        b, t, d = h.shape
        cfg = self.cfg
        q, k, v = self.qkv(h).split([d, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(b, t, cfg.n_heads, cfg.head_dim)  # [B, T, H, D]
        k = k.view(b, t, cfg.n_kv_heads, cfg.head_dim)  # [B, T, HKV, D]
        v = v.view(b, t, cfg.n_kv_heads, cfg.head_dim)  # [B, T, HKV, D]
        cos, sin = state.rope(cfg.head_dim)  # [T, D/2]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self, h: torch.Tensor, state: ForwardState, indexer: Indexer | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h[B, T, d] -> (out[B, T, d], this layer's indexer KL or None); records its selection in `state`."""
        b, t, d = h.shape
        q, k, v = self.project(h, state)
        if state.cache is not None:
            k, v = state.cache.layers[self.layer].append_kv(k, v, state.offset, self.cfg.max_seq_len)  # [B, S, HKV, D]
        kl = None
        if indexer is not None and state.mode == "dense_kl":
            out, kl = self._dense_with_kl(q, k, v, indexer, h, state)
        elif self.plan.kind == "dense" or state.mode == "dense_kl":
            out = self._dense(q, k, v)
        else:
            idx, qi, ki, wi = self._selection(h, state, indexer, q, k)
            out = self._sparse(q, k, v, idx)
            if state.mode == "sparse_kl" and indexer is not None:
                kl = self._selected_kl(q, k, idx, indexer, qi, ki, wi)
        return self.proj(out.reshape(b, t, d)), kl

    def _selection(self, h, state: ForwardState, indexer: Indexer | None, q: torch.Tensor, k: torch.Tensor):
        """The keys each new query reads, [B, T, k]; for an indexer layer also its (q, k, w) for the KL."""
        qi = ki = wi = None
        if state.mode == "oracle":
            idx = self._oracle_selection(q.detach(), k.detach(), state)
        elif self.plan.kind == "indexer":
            qi, ki, wi = indexer.project(h.detach(), state)
            if state.cache is not None:
                ki = state.cache.layers[self.layer].append_index_keys(ki, state.offset, self.cfg.max_seq_len)
            idx = indexer.select(qi.detach(), ki.detach(), wi.detach())  # [B, T, k]
        elif self.plan.kind == "shared":
            idx = state.selections[self.plan.source]  # [B, T, k] of the source layer, this very pass
        else:
            win = sink_window_indices(state.t, state.keys, self.plan.sinks, self.plan.window, h.device)  # [T, k]
            idx = win.unsqueeze(0).expand(h.shape[0], -1, -1)  # [B, T, k]
        state.selections[self.layer] = idx
        self.hook_selection(idx)
        return idx, qi, ki, wi

    def _oracle_selection(self, q: torch.Tensor, k: torch.Tensor, state: ForwardState) -> torch.Tensor:
        """Each query's `budget` keys with the most dense attention mass (summed over heads): [B, T, budget]."""
        plan = self.plan
        while plan.kind == "shared":  # a shared layer reads as many keys as the layer it shares
            plan = self.cfg.layer_plan(plan.source)
        budget = plan.max_keys
        mass = self._dense_probs(q, k)[1].sum(1)  # [B, T, S]
        mass = mass.masked_fill(~causal_mask(q.shape[1], k.shape[1], q.device), float("-inf"))
        return kernels.topk_indices(mass, budget, backend="reference")  # [B, T, budget]

    def _dense_probs(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit causal scores and probabilities, both [B, H, T, S]; k [B, S, HKV, D] expanded to H heads."""
        k = expand_kv(k, q.shape[2])  # [B, S, H, D]
        scores = torch.einsum("bthd,bshd->bhts", q, k) * self.scale  # [B, H, T, S]
        scores = scores.masked_fill(~causal_mask(q.shape[1], k.shape[1], q.device), float("-inf"))  # future -inf
        return scores, torch.softmax(scores, dim=-1)

    def _dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention over every key: q [B, T, H, D], k/v [B, S, HKV, D] -> [B, T, H, D]."""
        watched = self.hook_pattern.active or self.hook_attn_scores.active
        if self.plan.sparse and self.hook_dense_pattern.active:
            watched = True
        if watched:
            scores, probs = self._dense_probs(q, k)
            self.hook_attn_scores(scores)
            self.hook_pattern(probs)
            if self.plan.sparse:
                self.hook_dense_pattern(probs)
            return torch.einsum("bhts,bshd->bthd", probs, expand_kv(v, q.shape[2]))  # [B, T, H, D]
        t, s = q.shape[1], k.shape[1]
        mask = None if t == s or t == 1 else causal_mask(t, s, q.device)  # [T, S]; a cached prefix needs one
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            is_causal=mask is None and t > 1,
            enable_gqa=k.shape[2] != q.shape[2],
        )  # [B, H, T, D]
        return out.transpose(1, 2)  # [B, T, H, D]

    def _sparse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Attention over the selected keys only, through the gathered kernels: -> [B, T, H, D]."""
        out = kernels.sparse_attention(q, k, v, idx, scale=self.scale, backend=self.cfg.kernel_backend)  # grouped K/V
        if self.hook_dense_pattern.active:
            self.hook_dense_pattern(self._dense_probs(q.detach(), k.detach())[1])
        if self.hook_pattern.active or self.hook_attn_scores.active:
            self._fire_sparse_hooks(*self._selected_probs(q.detach(), k.detach(), idx), idx, k.shape[1])
        return out

    def _dense_with_kl(self, q, k, v, indexer: Indexer, h, state: ForwardState) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense attention (explicit probabilities, reused) and KL(p || softmax(I)) over every allowed key."""
        scores, probs = self._dense_probs(q, k)  # [B, H, T, S]
        self.hook_attn_scores(scores)
        self.hook_pattern(probs)
        self.hook_dense_pattern(probs)
        p = probs.detach().sum(1)  # [B, T, S]
        p = p / p.sum(-1, keepdim=True)
        qi, ki, wi = indexer.project(h.detach(), state)
        if state.cache is not None:
            ki = state.cache.layers[self.layer].append_index_keys(ki, state.offset, self.cfg.max_seq_len)
        if indexer.hooks_active:  # only to feed the indexer hooks: the same fused selection the sparse modes make
            indexer.select(qi.detach(), ki.detach(), wi.detach())
        kl = kl_to_target(p, indexer.dense_logits(qi, ki, wi))
        return torch.einsum("bhts,bshd->bthd", probs, expand_kv(v, q.shape[2])), kl  # [B, T, H, D]

    def _selected_kl(self, q, k, idx, indexer: Indexer, qi, ki, wi) -> torch.Tensor:
        """KL(p_S || softmax(I_S)) on the selected set S, p_S the main attention over S summed over heads."""
        p = self._selected_probs(q.detach(), k.detach(), idx)[1].sum(1)  # [B, T, k]
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
        return kl_to_target(p, indexer.selected_logits(qi, ki, wi, idx))

    def _selected_probs(self, q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scores and probabilities over the selected keys only: [B, H, T, k] each (-inf / 0 at idx = -1).

        Used for the sparse-stage KL target and the hooks, never for the attention output; q [B, T, H, D],
        k [B, S, HKV, D], idx [B, T, k]. `selected_dots` picks the product-or-gather path.
        """
        scores = selected_dots(q, expand_kv(k, q.shape[2]), idx).permute(0, 2, 1, 3) * self.scale  # [B, H, T, k]
        scores = scores.masked_fill((idx < 0).unsqueeze(1), float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query with no key (top-p never does) -> zeros
        return scores, probs

    def _fire_sparse_hooks(self, sel_scores, sel_probs, idx: torch.Tensor, s: int) -> None:
        """Scatter the selected scores/probabilities into [B, H, T, S] maps (only called when someone listens)."""
        b, h, t, kk = sel_probs.shape
        where = torch.where(idx >= 0, idx, s).unsqueeze(1).expand(b, h, t, kk)  # [B, H, T, k]; -1 -> spare column S
        pattern = sel_probs.new_zeros(b, h, t, s + 1).scatter_(-1, where, sel_probs)  # [B, H, T, S+1]
        self.hook_pattern(pattern[..., :s])
        if self.hook_attn_scores.active:
            scores = sel_scores.new_full((b, h, t, s + 1), float("-inf")).scatter_(-1, where, sel_scores)
            self.hook_attn_scores(scores[..., :s])


def layer_indexer(cfg: ModelConfig, plan: LayerPlan) -> Indexer | None:
    """The indexer a layer owns (only `indexer` layers have one)."""
    return Indexer(cfg.d_model, plan, cfg.kernel_backend) if plan.kind == "indexer" else None


__all__ = ["MODES", "Attention", "expand_kv", "kl_to_target", "layer_indexer"]
