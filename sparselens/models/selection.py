"""Selections that do not come from a fixed-k indexer: sink + window (static layers) and top-p truncation (adaptive k).

Every selection here has the kernels' canonical form: [B, T, K] int64, ascending key positions, -1 padding last,
never a key after the query's own position (query t of T sits at key position S - T + t).
"""

from __future__ import annotations

import torch


def canonical_rows(idx: torch.Tensor) -> torch.Tensor:
    """Rows of `idx` [.., K] (valid keys >= 0, -1 anywhere) sorted ascending with every -1 moved to the end."""
    big = torch.iinfo(torch.int64).max
    srt = idx.masked_fill(idx < 0, big).sort(dim=-1).values  # [.., K], invalid last
    return srt.masked_fill(srt == big, -1)


def sink_window_indices(
    t: int, s: int, sinks: int, window: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Sink + window selection for T queries ending a sequence of S keys: [T, sinks + window] int64, canonical.

    Query t (at key position pos = S - T + t) keeps keys 0 .. min(sinks, pos + 1) - 1 and the `window` most recent
    keys pos - window + 1 .. pos, each key once; slots no key fills are -1 (early queries see fewer keys).
    """
    if t > s:
        raise ValueError(f"{t} queries cannot end a sequence of {s} keys: T must be <= S")
    pos = torch.arange(s - t, s, device=device)[:, None]  # [T, 1]
    sink = torch.arange(sinks, device=device)[None, :].expand(t, sinks)  # [T, sinks]
    sink = sink.masked_fill(sink > pos, -1)
    recent = pos - window + 1 + torch.arange(window, device=device)[None, :]  # [T, window], ascending
    recent = recent.masked_fill(recent < sinks, -1)  # below sinks: either a sink already or before key 0
    return canonical_rows(torch.cat([sink, recent], dim=1))  # [T, sinks + window]


def top_p_truncate(idx: torch.Tensor, logits: torch.Tensor, top_p: float, k_min: int) -> torch.Tensor:
    """Adaptive k: keep, per query, the fewest selected keys whose softmax mass over the selection reaches top_p.

    idx [B, T, K] canonical (the indexer's top-K, K = k_max); logits [B, T, K] the indexer scores at those keys,
    -inf at -1 slots. The mass is softmax(logits) over the K candidates (Twilight-style top-p on the candidate
    set); at least min(k_min, valid keys) keys stay. Returns [B, T, K] canonical with the dropped keys as -1.
    """
    probs = torch.softmax(logits.float(), dim=-1).nan_to_num(0.0)  # [B, T, K]; an all -inf row is all 0
    order = probs.argsort(dim=-1, descending=True)  # [B, T, K]
    before = probs.gather(-1, order).cumsum(-1) - probs.gather(-1, order)  # mass of the keys ranked above
    keep_sorted = before < top_p  # the key that crosses top_p is kept, later ones are not
    keep_sorted[..., :k_min] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)  # back to idx's slots
    return canonical_rows(idx.masked_fill(~keep, -1))
