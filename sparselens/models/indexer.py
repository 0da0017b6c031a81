"""The lightning indexer: I(t, s) = sum_j w(t, j) * ReLU(q(t, j) . k(s)), then top-k over allowed keys.

One LayerNorm'd key per token is shared by all HI indexer heads; RoPE (half-split) goes on the first DI/2 dims of
q and k, the rest carry no position; w is projected from the hidden state and scaled by (HI * DI)^-1/2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparselens import kernels
from sparselens.config import LayerPlan
from sparselens.masks import causal_mask
from sparselens.models.hooks import HookPoint
from sparselens.models.rope import apply_rope
from sparselens.models.selection import top_p_truncate
from sparselens.models.state import ForwardState

SCORE_GATHER_MAX = 1 << 20  # T * S up to which `selected_dots` uses a [T, S] product (else it gathers key rows)


class Indexer(nn.Module):
    """A lightning indexer: `plan.indexer_heads` heads of `plan.indexer_dim` dims, and its k policy (fixed, top-p)."""

    def __init__(self, d_model: int, plan: LayerPlan, backend: str | None = None) -> None:
        super().__init__()
        if plan.kind != "indexer":
            raise ValueError(f"an Indexer needs an 'indexer' layer plan, got {plan.kind!r}")
        self.plan, self.backend = plan, backend
        hi, di = plan.indexer_heads, plan.indexer_dim
        self.wq = nn.Linear(d_model, hi * di, bias=False)
        self.wk = nn.Linear(d_model, di, bias=False)
        self.k_norm = nn.LayerNorm(di, eps=1e-6)
        self.ww = nn.Linear(d_model, hi, bias=False)
        self.weight_scale = (hi * di) ** -0.5
        self.hook_scores = HookPoint("[B, Q, K] I(t,s), -inf where not allowed")
        self.hook_head_scores = HookPoint("[B, HI, Q, K] w * ReLU(q . k) per indexer head")
        self.hook_weights = HookPoint("[B, Q, HI]")
        self.hook_topk = HookPoint("[B, Q, k] int64, -1 = none")

    @property
    def hooks_active(self) -> bool:
        hooks = (self.hook_scores, self.hook_head_scores, self.hook_weights, self.hook_topk)
        return any(h.active for h in hooks)

    def project(self, h: torch.Tensor, state: ForwardState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h[B, T, d] -> q[B, T, HI, DI], k[B, T, DI], w[B, T, HI], RoPE on the first DI/2 dims at state's positions."""
        b, t, _ = h.shape
        hi, di = self.plan.indexer_heads, self.plan.indexer_dim
        rot = di // 2
        cos, sin = state.rope(rot)  # [T, DI/4]
        q = self.wq(h).view(b, t, hi, di)  # [B, T, HI, DI]
        k = self.k_norm(self.wk(h))  # [B, T, DI]
        q = torch.cat((apply_rope(q[..., :rot], cos, sin), q[..., rot:]), dim=-1)
        k = torch.cat((apply_rope(k[..., :rot], cos, sin), k[..., rot:]), dim=-1)
        w = self.ww(h) * self.weight_scale  # [B, T, HI]
        return q, k, w

    def select(self, q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Top-k key indices [B, T, k] (int64, -1 = none) over causally allowed keys; fires the indexer hooks.

        q [B, T, HI, DI], k [B, S, DI] (S >= T: cached keys first), w [B, T, HI]. The selection is always the fused
        `indexer_topk`, whoever listens: ties (e.g. score 0 when every ReLU is off) break the same way with and
        without hooks. Scores are computed only to feed a listening hook. With top_p, the top-k is then truncated
        per query (selection.top_p_truncate).
        """
        backend, plan = self.backend, self.plan
        with torch.no_grad():
            idx = kernels.indexer_topk(q, k, w, plan.topk, causal=True, backend=backend)  # [B, T, k]
            if plan.top_p is not None:
                idx = top_p_truncate(idx, self.selected_logits(q, k, w, idx), plan.top_p, plan.k_min)
            if self.hook_scores.active:
                self.hook_scores(kernels.indexer_scores(q, k, w, causal=True, backend=backend))  # [B, T, T]
            if self.hook_head_scores.active:
                self.hook_head_scores(head_scores(q, k, w))  # [B, HI, T, T]
            self.hook_weights(w)  # [B, T, HI]
            self.hook_topk(idx)  # [B, T, k]
        return idx

    def dense_logits(self, q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """I(t, s) for all key positions with autograd, -inf after t: [B, T, T] (warm-up KL)."""
        return kernels.indexer_scores(q, k, w, causal=True, backend="reference")

    @staticmethod
    def selected_logits(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """I(t, s) at the selected keys only, with autograd: [B, T, k], -inf where idx is -1 (sparse-stage KL)."""
        dots = selected_dots(q, k, idx)  # [B, T, HI, k]
        logits = (w.unsqueeze(-1) * F.relu(dots)).sum(dim=2)  # [B, T, k]
        return logits.masked_fill(idx < 0, float("-inf"))


def selected_dots(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Dot products of each query with its selected keys only, with autograd: [B, T, G, K].

    q [B, T, G, D] (G query heads), k [B, S, G, D] (one key per head) or [B, S, D] (one key shared by all heads,
    as in the indexer), idx [B, T, K] (-1 entries read key 0: mask them afterwards). Used by the indexer's
    selected logits and by attention's selected scores. At training lengths (T * S <= SCORE_GATHER_MAX) one
    [T, S] product and a gather of K scalars per query move far less memory than gathering K key rows of G * D
    values per query; longer inputs gather the key rows.
    """
    b, t, kk = idx.shape
    g, d = q.shape[2], q.shape[3]
    shared = k.dim() == 3
    safe = idx.clamp(min=0)
    if t * k.shape[1] <= SCORE_GATHER_MAX:
        full = torch.einsum("btgd,bsd->btgs" if shared else "btgd,bsgd->btgs", q, k)  # [B, T, G, S]
        return torch.gather(full, -1, safe.unsqueeze(2).expand(b, t, g, kk))  # [B, T, G, K]
    if shared:
        flat = safe.reshape(b, t * kk, 1).expand(-1, -1, d)  # [B, T*K, D]
        k_sel = torch.gather(k, 1, flat).view(b, t, kk, d)  # [B, T, K, D]
        return torch.einsum("btgd,btkd->btgk", q, k_sel)  # [B, T, G, K]
    flat = safe.reshape(b, t * kk, 1, 1).expand(-1, -1, g, d)  # [B, T*K, G, D]
    k_sel = torch.gather(k, 1, flat).view(b, t, kk, g, d)  # [B, T, K, G, D]
    return torch.einsum("btgd,btkgd->btgk", q, k_sel)  # [B, T, G, K]


def head_scores(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-head indexer scores w * ReLU(q . k): [B, HI, T, S], -inf after each query's position."""
    t, s = q.shape[1], k.shape[1]
    dots = torch.einsum("bthd,bsd->bhts", q, k)  # [B, HI, T, S]
    out = w.permute(0, 2, 1).unsqueeze(-1) * F.relu(dots)  # [B, HI, T, S]
    return out.masked_fill(~causal_mask(t, s, q.device), float("-inf"))  # future keys -inf
