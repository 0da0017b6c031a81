"""Causal self-attention: dense (SDPA) or DSA (indexer top-k, then attention over the gathered keys only).

Modes of a DSA layer (set per forward call):
- "sparse": the model as deployed; attention reads only the k selected keys of each query.
- "dense_kl": DSA warm-up; attention stays dense and the layer returns KL(p || softmax(I)) with p the main
  attention summed over heads and L1-normalised.
- "sparse_kl": DSA sparse stage; sparse attention plus KL(p_S || softmax(I_S)) restricted to the selected set S.
The indexer always reads a detached hidden state: it learns from its KL only, the main model from the LM loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparselens import kernels
from sparselens.config import ModelConfig
from sparselens.masks import causal_mask
from sparselens.models.hooks import HookPoint
from sparselens.models.indexer import Indexer, selected_dots
from sparselens.models.rope import apply_rope

MODES = ("sparse", "dense_kl", "sparse_kl")


def kl_to_target(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over queries of KL(p || softmax(logits)); p[..., S] sums to 1, logits -inf where p must be 0."""
    logq = torch.log_softmax(logits, dim=-1)
    logq = torch.where(p > 0, logq, torch.zeros_like(logq))
    return (torch.xlogy(p, p) - p * logq).sum(-1).mean()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.scale = cfg.head_dim**-0.5
        self.hook_attn_scores = HookPoint("[B, H, Q, K] pre-softmax scores, -inf where not looked at")
        self.hook_pattern = HookPoint("[B, H, Q, K] probabilities used, zeros where a sparse layer did not look")
        if cfg.attention == "dsa":
            self.hook_dense_pattern = HookPoint("[B, H, Q, K] what dense softmax attention would have been")

    def forward(
        self, h: torch.Tensor, rope: tuple[torch.Tensor, ...], indexer: Indexer | None, mode: str = "sparse"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h[B, T, d] -> (out[B, T, d], indexer KL or None). rope = (cos, sin, cos_idx, sin_idx)."""
        b, t, d = h.shape
        cos, sin, cos_i, sin_i = rope
        q, k, v = self.qkv(h).view(b, t, 3, self.cfg.n_heads, self.cfg.head_dim).unbind(2)  # 3 x [B, T, H, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if indexer is None:
            out, kl = self._dense(q, k, v), None
        elif mode == "dense_kl":
            out, kl = self._dense_with_kl(q, k, v, indexer, h, cos_i, sin_i)
        elif mode in ("sparse", "sparse_kl"):
            out, kl = self._sparse(q, k, v, indexer, h, cos_i, sin_i, with_kl=mode == "sparse_kl")
        else:
            raise ValueError(f"unknown attention mode {mode!r}; use one of {MODES}")
        return self.proj(out.reshape(b, t, d)), kl

    def _dense_probs(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit causal scores and probabilities, both [B, H, T, S]."""
        scores = torch.einsum("bthd,bshd->bhts", q, k) * self.scale  # [B, H, T, S]
        scores = scores.masked_fill(~causal_mask(q.shape[1], k.shape[1], q.device), float("-inf"))  # future -inf
        return scores, torch.softmax(scores, dim=-1)

    def _dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.hook_pattern.active or self.hook_attn_scores.active:
            scores, probs = self._dense_probs(q, k)
            self.hook_attn_scores(scores)
            self.hook_pattern(probs)
            return torch.einsum("bhts,bshd->bthd", probs, v)  # [B, T, H, D]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return out.transpose(1, 2)  # [B, T, H, D]

    def _dense_with_kl(self, q, k, v, indexer, h, cos_i, sin_i) -> tuple[torch.Tensor, torch.Tensor]:
        scores, probs = self._dense_probs(q, k)  # [B, H, T, T]
        self.hook_attn_scores(scores)
        self.hook_pattern(probs)
        self.hook_dense_pattern(probs)
        p = probs.detach().sum(1)  # [B, T, T]
        p = p / p.sum(-1, keepdim=True)
        qi, ki, wi = indexer.project(h.detach(), cos_i, sin_i)
        if indexer.hooks_active:  # only to feed the indexer hooks: the same fused selection the sparse modes make
            indexer.select(qi.detach(), ki.detach(), wi.detach())
        kl = kl_to_target(p, indexer.dense_logits(qi, ki, wi))
        return torch.einsum("bhts,bshd->bthd", probs, v), kl

    def _sparse(self, q, k, v, indexer, h, cos_i, sin_i, with_kl: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        qi, ki, wi = indexer.project(h.detach(), cos_i, sin_i)
        idx = indexer.select(qi.detach(), ki.detach(), wi.detach())  # [B, T, k]
        out = kernels.sparse_attention(q, k, v, idx, scale=self.scale, backend=self.cfg.kernel_backend)
        if self.hook_dense_pattern.active:
            self.hook_dense_pattern(self._dense_probs(q.detach(), k.detach())[1])
        kl = None
        if with_kl or self.hook_pattern.active or self.hook_attn_scores.active:
            sel_scores, sel_probs = self._selected_probs(q.detach(), k.detach(), idx)  # [B, H, T, k]
            self._fire_sparse_hooks(sel_scores, sel_probs, idx, k.shape[1])
            if with_kl:
                p = sel_probs.sum(1)  # [B, T, k]
                p = p / p.sum(-1, keepdim=True)
                kl = kl_to_target(p, indexer.selected_logits(qi, ki, wi, idx))
        return out, kl

    def _selected_probs(self, q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scores and probabilities over the selected keys only: [B, H, T, k] each (-inf / 0 at idx = -1).

        Used for the sparse-stage KL target and the hooks, never for the attention output; q [B, T, H, D],
        k [B, S, H, D], idx [B, T, k]. `selected_dots` picks the product-or-gather path.
        """
        scores = selected_dots(q, k, idx).permute(0, 2, 1, 3) * self.scale  # [B, H, T, k]
        scores = scores.masked_fill((idx < 0).unsqueeze(1), float("-inf"))
        return scores, torch.softmax(scores, dim=-1)

    def _fire_sparse_hooks(self, sel_scores, sel_probs, idx: torch.Tensor, s: int) -> None:
        """Scatter the selected scores/probabilities into [B, H, T, S] maps, only if someone listens."""
        if not (self.hook_pattern.active or self.hook_attn_scores.active):
            return
        b, h, t, kk = sel_probs.shape
        where = torch.where(idx >= 0, idx, s).unsqueeze(1).expand(b, h, t, kk)  # [B, H, T, k]; -1 -> spare column S
        pattern = sel_probs.new_zeros(b, h, t, s + 1).scatter_(-1, where, sel_probs)  # [B, H, T, S+1]
        self.hook_pattern(pattern[..., :s])
        if self.hook_attn_scores.active:
            scores = sel_scores.new_full((b, h, t, s + 1), float("-inf")).scatter_(-1, where, sel_scores)
            self.hook_attn_scores(scores[..., :s])
