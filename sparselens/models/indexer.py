"""The lightning indexer: I(t, s) = sum_j w(t, j) * ReLU(q(t, j) . k(s)), then top-k over allowed keys.

One LayerNorm'd key per token is shared by all HI indexer heads; RoPE (half-split) goes on the first DI/2 dims of
q and k, the rest carry no position; w is projected from the hidden state and scaled by (HI * DI)^-1/2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparselens import kernels
from sparselens.config import ModelConfig
from sparselens.models.hooks import HookPoint
from sparselens.models.rope import apply_rope

SCORE_GATHER_MAX = 1 << 20  # T * S up to which selected logits come from a [T, S] product


class Indexer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hi, di = cfg.indexer_heads, cfg.indexer_dim
        self.wq = nn.Linear(cfg.d_model, hi * di, bias=False)
        self.wk = nn.Linear(cfg.d_model, di, bias=False)
        self.k_norm = nn.LayerNorm(di, eps=1e-6)
        self.ww = nn.Linear(cfg.d_model, hi, bias=False)
        self.weight_scale = (hi * di) ** -0.5
        self.hook_scores = HookPoint("[B, Q, K] I(t,s), -inf where not allowed")
        self.hook_head_scores = HookPoint("[B, HI, Q, K] w * ReLU(q . k) per indexer head")
        self.hook_weights = HookPoint("[B, Q, HI]")
        self.hook_topk = HookPoint("[B, Q, k] int64, -1 = none")

    @property
    def hooks_active(self) -> bool:
        hooks = (self.hook_scores, self.hook_head_scores, self.hook_weights, self.hook_topk)
        return any(h.active for h in hooks)

    def project(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h[B, T, d] -> q[B, T, HI, DI], k[B, T, DI], w[B, T, HI]; cos/sin [T, DI/4] for the rotated half."""
        b, t, _ = h.shape
        hi, di = self.cfg.indexer_heads, self.cfg.indexer_dim
        rot = di // 2
        q = self.wq(h).view(b, t, hi, di)  # [B, T, HI, DI]
        k = self.k_norm(self.wk(h))  # [B, T, DI]
        q = torch.cat((apply_rope(q[..., :rot], cos, sin), q[..., rot:]), dim=-1)
        k = torch.cat((apply_rope(k[..., :rot], cos, sin), k[..., rot:]), dim=-1)
        w = self.ww(h) * self.weight_scale  # [B, T, HI]
        return q, k, w

    def select(self, q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Top-k key indices [B, T, k] (int64, -1 = none) over causally allowed keys; fires the indexer hooks."""
        backend = self.cfg.kernel_backend
        with torch.no_grad():
            if self.hook_scores.active or self.hook_head_scores.active:
                scores = kernels.indexer_scores(q, k, w, causal=True, backend=backend)  # [B, T, T]
                self.hook_scores(scores)
                if self.hook_head_scores.active:
                    self.hook_head_scores(head_scores(q, k, w))
                idx = kernels.topk_indices(scores, self.cfg.topk, backend=backend)
            else:
                idx = kernels.indexer_topk(q, k, w, self.cfg.topk, causal=True, backend=backend)  # [B, T, k]
            self.hook_weights(w)
            self.hook_topk(idx)
        return idx

    def dense_logits(self, q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """I(t, s) for all key positions with autograd, -inf after t: [B, T, T] (warm-up KL)."""
        return kernels.indexer_scores(q, k, w, causal=True, backend="reference")

    @staticmethod
    def selected_logits(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """I(t, s) at the selected keys only, with autograd: [B, T, k], -inf where idx is -1 (sparse-stage KL).

        At training lengths the [T, HI, S] dot products plus a scalar gather are cheaper than gathering k key rows
        per query (same trade-off as Attention._selected_probs); longer inputs gather the key rows.
        """
        b, t, kk = idx.shape
        hi = q.shape[2]
        safe = idx.clamp(min=0)
        if t * k.shape[1] <= SCORE_GATHER_MAX:
            full = torch.einsum("bthd,bsd->bths", q, k)  # [B, T, HI, S]
            dots = torch.gather(full, -1, safe.unsqueeze(2).expand(b, t, hi, kk))  # [B, T, HI, k]
        else:
            flat = safe.reshape(b, t * kk, 1).expand(-1, -1, k.shape[-1])  # [B, T*k, DI]
            k_sel = torch.gather(k, 1, flat).view(b, t, kk, k.shape[-1])  # [B, T, k, DI]
            dots = torch.einsum("bthd,btkd->bthk", q, k_sel)  # [B, T, HI, k]
        logits = (w.unsqueeze(-1) * F.relu(dots)).sum(dim=2)  # [B, T, k]
        return logits.masked_fill(idx < 0, float("-inf"))


def head_scores(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-head indexer scores w * ReLU(q . k): [B, HI, T, S], -inf after each query's position."""
    t, s = q.shape[1], k.shape[1]
    dots = torch.einsum("bthd,bsd->bhts", q, k)  # [B, HI, T, S]
    out = w.permute(0, 2, 1).unsqueeze(-1) * F.relu(dots)  # [B, HI, T, S]
    future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(s - t + 1)  # [T, S]
    return out.masked_fill(future, float("-inf"))
