"""Per-query statistics of attention and indexer rows, from hook tensors (plain torch, no I/O).

Definitions follow the reference notes (shared/reference/patterns.md): entropy -sum a log a (nats); sink mass on
the first `sink` keys; local mass on the last `local` keys up to and including the query; k_q = fewest keys whose
mass reaches q of the row; recall = dense mass (summed over heads, L1-normalised) on the selected keys.
Query t of a [.., T, S] map sits at key position S - T + t; capture always has S = T.
"""

from __future__ import annotations

import numpy as np
import torch

from sparselens.masks import causal_mask
from sparselens.metrics import recall_per_query

QUANTILES = (0.5, 0.9, 0.99)  # score quantiles kept per indexer row
MASS_FRACTIONS = (0.5, 0.9, 0.99)  # softmax-mass thresholds of the indexer


def keys_for_mass(sorted_desc: torch.Tensor, fractions: tuple[float, ...]) -> list[torch.Tensor]:
    """Fewest keys whose mass reaches each fraction of the row total.

    sorted_desc [..., N] non-negative weights sorted descending (N may be a prefix holding every non-zero weight)
    -> one int32 [...] tensor per fraction, each >= 1.
    """
    cum = sorted_desc.cumsum(-1)  # [..., N], non-decreasing
    targets = cum[..., -1:] * torch.tensor(fractions, dtype=cum.dtype, device=cum.device)  # [..., F]
    first = torch.searchsorted(cum, targets.contiguous())  # [..., F] first index with cum >= target
    keys = (first + 1).clamp(max=sorted_desc.shape[-1]).to(torch.int32)
    return list(keys.unbind(-1))


def local_mass(pattern: torch.Tensor, local: int) -> torch.Tensor:
    """Mass on the last `local` keys up to and including each query: pattern [B, H, T, S] -> [B, H, T]."""
    t, s = pattern.shape[-2:]
    out = pattern.new_zeros(pattern.shape[:-1])
    for d in range(min(local, s)):
        diag = torch.diagonal(pattern, offset=s - t - d, dim1=-2, dim2=-1)  # [B, H, T - max(0, d - (S - T))]
        out[..., t - diag.shape[-1] :] += diag
    return out


def attention_row_stats(
    pattern: torch.Tensor, sink: int = 4, local: int = 16, nonzero_max: int | None = None
) -> dict[str, torch.Tensor]:
    """Row statistics of attention probabilities.

    pattern [B, H, T, S] (rows sum to 1, zeros where not looked at); nonzero_max: an upper bound on the non-zero
    entries per row (a sparse layer's k), which lets k90/k95 use a top-k instead of a full sort.
    Returns {entropy, max_weight, sink_mass, local_mass, mean_distance, k90, k95}, each [B, H, T].
    """
    t, s = pattern.shape[-2:]
    device = pattern.device
    key_pos = torch.arange(s, device=device, dtype=pattern.dtype)  # [S]
    query_pos = torch.arange(s - t, s, device=device, dtype=pattern.dtype)  # [T]
    row_sum = pattern.sum(-1)  # [B, H, T]
    limit = s if nonzero_max is None else min(s, nonzero_max)
    top = pattern.topk(limit, dim=-1).values if limit < s else pattern.sort(dim=-1, descending=True).values
    k90, k95 = keys_for_mass(top, (0.9, 0.95))  # [B, H, T] each
    return {
        "entropy": (-torch.xlogy(pattern, pattern).sum(-1)).clamp(min=0.0),
        "max_weight": pattern.amax(-1),
        "sink_mass": pattern[..., :sink].sum(-1),
        "local_mass": local_mass(pattern, local),
        "mean_distance": query_pos * row_sum - pattern @ key_pos,  # sum_s a(t,s) (t - s)
        "k90": k90,
        "k95": k95,
    }


def selection_stats(
    dense_pattern: torch.Tensor, idx: torch.Tensor, needed: torch.Tensor | None, has_truth: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """How well the selected keys cover dense attention and the ground truth.

    dense_pattern [B, H, T, S] (what dense attention would have been), idx [B, T, k] (-1 = none),
    needed bool [B, T, S] or None, has_truth bool [B] (samples with ground truth; default all).
    Returns recall, oracle_recall [B, T]; head_recall [B, H, T]; with `needed`, also needed_recall [B, T] (NaN
    where nothing is needed or the sample has no ground truth) and n_needed [B, T] (float, NaN without truth).
    """
    recall, oracle = recall_per_query(dense_pattern, idx)  # [B, T] each
    h = dense_pattern.shape[1]
    gather_idx = idx.clamp(min=0).unsqueeze(1).expand(-1, h, -1, -1)  # [B, H, T, k]
    head_recall = (torch.gather(dense_pattern, -1, gather_idx) * (idx >= 0).unsqueeze(1)).sum(-1)  # [B, H, T]
    out = {"recall": recall, "oracle_recall": oracle, "head_recall": head_recall}
    if needed is not None:
        truth = torch.ones(idx.shape[0], dtype=torch.bool) if has_truth is None else has_truth
        truth = truth.to(idx.device).unsqueeze(1)  # [B, 1]
        n_needed = needed.sum(-1).float()  # [B, T]
        hits = (needed & selected_mask(idx, dense_pattern.shape[-1])).sum(-1)  # [B, T]
        out["needed_recall"] = torch.where((n_needed > 0) & truth, hits / n_needed.clamp(min=1), torch.nan)
        out["n_needed"] = torch.where(truth, n_needed, torch.nan)
    return out


def selected_mask(idx: torch.Tensor, s: int) -> torch.Tensor:
    """idx [B, T, k] (-1 = none) -> bool [B, T, S], True at the selected keys."""
    b, t, _ = idx.shape
    where = torch.where(idx >= 0, idx, s)  # [B, T, k]; -1 -> spare column S
    return torch.zeros(b, t, s + 1, dtype=torch.bool, device=idx.device).scatter_(-1, where, True)[..., :s]


def _sorted_quantiles(sorted_desc: torch.Tensor, n: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Linear-interpolation quantiles (numpy's default) of the first n entries of rows sorted descending.

    sorted_desc [..., T, S], n [T] allowed count per query -> one [..., T] tensor per q.
    """

    def at_ascending(pos: torch.Tensor) -> torch.Tensor:
        where = (n - 1 - pos).view(-1, 1).expand(*sorted_desc.shape[:-1], 1)  # [..., T, 1]
        return torch.gather(sorted_desc, -1, where).squeeze(-1)  # [..., T]

    out = []
    for q in qs:
        pos = q * (n - 1).double()  # [T], ascending position
        lo, hi = pos.floor().long(), pos.ceil().long()
        v_lo, v_hi = at_ascending(lo), at_ascending(hi)
        out.append(v_lo + (pos - lo).to(sorted_desc.dtype) * (v_hi - v_lo))
    return out


def indexer_row_stats(rows: torch.Tensor, dense_pattern: torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics of indexer score rows and their correlation with the main heads' dense attention.

    rows [B, J, T, S]: score rows (-inf where not allowed), e.g. I(t,s) stacked with the per-head w*ReLU(q.k);
    dense_pattern [B, H, T, S]. Returns score_mean/max/q50/q90/q99, active_frac, keys_50/90/99 [B, J, T] and
    main_head_corr [B, J, T, H] (Pearson over allowed keys; NaN where a row is constant).
    """
    t, s = rows.shape[-2:]
    allowed = causal_mask(t, s, rows.device)  # [T, S]
    n = allowed.sum(-1)  # [T]
    zeroed = rows.masked_fill(~allowed, 0.0)  # [B, J, T, S]
    mean = zeroed.sum(-1) / n  # [B, J, T]
    sorted_desc = rows.sort(dim=-1, descending=True).values  # [B, J, T, S], -inf last
    q50, q90, q99 = _sorted_quantiles(sorted_desc, n, QUANTILES)
    probs = torch.softmax(sorted_desc, dim=-1)  # [B, J, T, S] softmax over allowed keys, sorted descending
    keys_50, keys_90, keys_99 = keys_for_mass(probs, MASS_FRACTIONS)
    return {
        "score_mean": mean,
        "score_max": sorted_desc[..., 0],
        "score_q50": q50,
        "score_q90": q90,
        "score_q99": q99,
        "active_frac": (zeroed != 0).sum(-1) / n,
        "keys_50": keys_50,
        "keys_90": keys_90,
        "keys_99": keys_99,
        "main_head_corr": row_correlation(zeroed, mean, dense_pattern, allowed),
    }


def row_correlation(x: torch.Tensor, x_mean: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over allowed keys of every row of x with the same query's row of every y head.

    x [B, J, T, S] (zeros where not allowed), x_mean [B, J, T], y [B, H, T, S] (zeros where not allowed)
    -> [B, J, T, H], NaN where either row is constant.
    """
    n = allowed.sum(-1)  # [T]
    xc = (x - x_mean.unsqueeze(-1)) * allowed  # [B, J, T, S], centred over allowed keys
    yc = (y - y.sum(-1, keepdim=True) / n.unsqueeze(-1)) * allowed  # [B, H, T, S]
    cov = torch.einsum("bjts,bhts->bjth", xc, yc)  # [B, J, T, H]
    var_x, var_y = xc.square().sum(-1), yc.square().sum(-1)  # [B, J, T], [B, H, T]
    denom = (var_x.unsqueeze(-1) * var_y.transpose(1, 2).unsqueeze(1)).sqrt()  # [B, J, T, H]
    return torch.where(denom > 1e-20, cov / denom.clamp(min=1e-30), torch.nan)


def needed_mask(needed: list[list[np.ndarray] | None], t: int, s: int) -> torch.Tensor:
    """Ground truth as bool [B, T, S] from per-sample lists of T int arrays (needed[b][t] = positions <= t);
    a None entry (text without ground truth) gives an all-False row block."""
    mask = torch.zeros(len(needed), t, s, dtype=torch.bool)
    for b, rows in enumerate(needed):
        if rows is None:
            continue
        lengths = torch.tensor([len(r) for r in rows[:t]], dtype=torch.long)  # [T]
        if int(lengths.sum()) == 0:
            continue
        cols = torch.from_numpy(np.concatenate(rows[:t]).astype(np.int64))  # [sum(lengths)]
        mask[b, torch.repeat_interleave(torch.arange(t), lengths), cols] = True
    return mask
