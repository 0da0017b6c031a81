"""CPU fast path for indexer scores: compiled tile kernel forward (`_native/indexer.c`), chunked-matmul backward.

The forward never builds the [B, T, HI, S] per-head logits the reference needs: a 16-key panel is scored for all
heads in registers and summed on the spot. With autograd, small problems (under T_S_ELEMS_FOR_RECOMPUTE logits,
e.g. every training size of the quick preset) run the reference graph, whose backward reuses its saved logits and
beats any recompute; large ones use the compiled forward and a backward that recomputes the logits one query
chunk at a time with matmuls, so memory stays bounded. Without the compiled library the forward is the same
chunked matmul recompute in torch (`_forward_chunked`), with the same backward.
"""

import torch

from sparselens.kernels import _native
from sparselens.kernels._checks import check_indexer_args, empty_output
from sparselens.kernels.indexer_scores import reference

PANEL = 16  # keys per packed panel, fixed by _native/indexer.c
QUERY_BLOCK = 32  # queries sharing one sweep over a block of key panels
PANEL_BYTES = 128 * 1024  # key panels per sweep sized to stay in L2
BWD_CHUNK_ELEMS = 1 << 24  # [B, Tc, HI, S] logits elements recomputed at once in the backward
T_S_ELEMS_FOR_RECOMPUTE = 1 << 26  # below this many [B,T,HI,S] logits, training runs the reference graph instead


def pack_keys(k: torch.Tensor) -> torch.Tensor:
    """Keys [B, S, DI] -> zero-padded 16-key panels [B, ceil(S/16), DI, 16], the layout the tile kernel streams."""
    B, S, DI = k.shape
    n_panels = -(-S // PANEL)
    kp = k.new_zeros(B, n_panels * PANEL, DI, dtype=torch.float32)
    kp[:, :S] = k
    return kp.view(B, n_panels, PANEL, DI).transpose(2, 3).contiguous()  # [B, NP, DI, 16]


def pad_heads(q: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad HI to a multiple of 4 (the tile's head group) with zero queries and weights -> q [B,T,HP,DI], w [B,T,HP]."""
    B, T, HI, DI = q.shape
    HP = -(-HI // 4) * 4
    qp = q.new_zeros(B, T, HP, DI, dtype=torch.float32)
    wp = w.new_zeros(B, T, HP, dtype=torch.float32)
    qp[:, :, :HI], wp[:, :, :HI] = q, w
    return qp, wp  # [B, T, HP, DI], [B, T, HP]


def panels_per_block(DI: int) -> int:
    """How many key panels one query block sweeps before moving on (keeps the panels in L2)."""
    return max(1, PANEL_BYTES // (DI * PANEL * 4))


def _forward_native(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, causal: bool) -> torch.Tensor:
    B, T, S, HI, DI = check_indexer_args(q, k, w)
    qp, wp = pad_heads(q.detach(), w.detach())
    kp = pack_keys(k.detach())
    out = empty_output(B, T, S, dtype=torch.float32)
    if B * T * S == 0:
        return out
    n_items = B * -(-T // QUERY_BLOCK)
    _native.launch(
        "sl_indexer_scores",
        *(_native.ptr(x) for x in (qp, kp, wp, out)),
        B, T, S, qp.shape[2], DI, int(causal), QUERY_BLOCK, panels_per_block(DI),
        n_items=n_items,
    )  # fmt: skip
    return out


def _forward_chunked(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, causal: bool) -> torch.Tensor:
    """The torch path's forward: per-head logits for one chunk of queries at a time ([B, Tc, HI, S], bounded)."""
    B, T, S, HI, DI = check_indexer_args(q, k, w)
    out = empty_output(B, T, S, dtype=torch.float32)
    kt = k.detach().float().transpose(1, 2)  # [B, DI, S]
    chunk = max(1, BWD_CHUNK_ELEMS // max(1, B * HI * S))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        qc = q[:, t0:t1].detach().float().reshape(B, (t1 - t0) * HI, DI)  # [B, Tc*HI, DI]
        relu = torch.bmm(qc, kt).clamp_(min=0.0).view(B, t1 - t0, HI, S)  # [B, Tc, HI, S]
        out[:, t0:t1] = torch.einsum("bths,bth->bts", relu, w[:, t0:t1].detach().float())
    if causal:
        out.masked_fill_(~reference.causal_mask(T, S, out.device), float("-inf"))
    return out


def _backward_chunked(q, k, w, grad, causal):
    """Gradients of sum(grad * I) in q, k, w, recomputing per-head logits for a chunk of queries at a time."""
    B, T, HI, DI = q.shape
    S = k.shape[1]
    qf, kf, wf = q.detach().float(), k.detach().float(), w.detach().float()
    grad = grad.float()
    if causal:
        grad = grad.masked_fill(~reference.causal_mask(T, S, grad.device), 0.0)
    dq, dk = empty_output(B, T, HI, DI, dtype=torch.float32), torch.zeros(B, S, DI)
    dw = empty_output(B, T, HI, dtype=torch.float32)
    kt = kf.transpose(1, 2)  # [B, DI, S]
    chunk = max(1, BWD_CHUNK_ELEMS // max(1, B * HI * S))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        n = t1 - t0
        qc = qf[:, t0:t1].reshape(B, n * HI, DI)  # [B, Tc*HI, DI]
        relu = torch.bmm(qc, kt).clamp_(min=0.0)  # [B, Tc*HI, S]
        g = grad[:, t0:t1]  # [B, Tc, S]
        dw[:, t0:t1] = torch.bmm(relu.view(B * n, HI, S), g.reshape(B * n, S, 1)).view(B, n, HI)
        gl = g[:, :, None, :] * wf[:, t0:t1, :, None]  # [B, Tc, HI, S]
        gl.masked_fill_(relu.view(B, n, HI, S) == 0.0, 0.0)  # ReLU' (logits <= 0 carry no gradient)
        gl = gl.view(B, n * HI, S)  # [B, Tc*HI, S]
        dq[:, t0:t1] = torch.bmm(gl, kf).view(B, n, HI, DI)
        dk.baddbmm_(gl.transpose(1, 2), qc)
    return dq.to(q.dtype), dk.to(k.dtype), dw.to(w.dtype)


class _IndexerScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, w, causal):
        ctx.causal = causal
        ctx.save_for_backward(q, k, w)
        return (_forward_chunked if _native.library() is None else _forward_native)(q, k, w, causal)

    @staticmethod
    def backward(ctx, grad):
        q, k, w = ctx.saved_tensors
        dq, dk, dw = _backward_chunked(q, k, w, grad, ctx.causal)
        return dq, dk, dw, None


def indexer_scores(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """CPU indexer scores with the reference's contract: q [B,T,HI,DI], k [B,S,DI], w [B,T,HI] -> [B,T,S] fp32.

    Query t sits at key position S - T + t; with `causal`, later keys are -inf. Differentiable in q, k, w: when a
    gradient is needed below T_S_ELEMS_FOR_RECOMPUTE logits the reference graph runs instead (its autograd beats
    any recompute at training sizes; see README); otherwise the compiled forward (the chunked torch forward
    without the compiled library), with the chunked backward.
    """
    check_indexer_args(q, k, w)
    if q.device.type != "cpu":
        raise ValueError(f"indexer_scores backend 'cpu' got {q.device} tensors: use backend=None or 'triton'")
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or w.requires_grad)
    if needs_grad and T_S_ELEMS_FOR_RECOMPUTE > q.shape[0] * q.shape[1] * q.shape[2] * k.shape[1]:
        return reference.indexer_scores(q, k, w, causal=causal)
    return _IndexerScores.apply(q, k, w, causal)
