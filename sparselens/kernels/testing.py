"""Checks shared by the kernel tests and benchmarks: error ratio, and selection validity and equivalence."""

import torch


def error_ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
    """rms(out - ref) / rms(ref) over the entries where ref is finite; inf if out is non-finite where ref is not.

    Entries where ref is -inf/+inf must hold the same value in out (e.g. causally masked scores).
    """
    out, ref = out.detach().double(), ref.detach().double()
    finite = torch.isfinite(ref)
    if not torch.equal(out[~finite], ref[~finite]) or not torch.isfinite(out[finite]).all():
        return float("inf")
    if not finite.any():
        return 0.0
    err = (out[finite] - ref[finite]).pow(2).mean().sqrt()
    scale = ref[finite].pow(2).mean().sqrt()
    return float(err / scale) if scale > 0 else float(err)


def check_selection(indices: torch.Tensor, scores: torch.Tensor, k: int) -> str | None:
    """Why indices [B,T,k] are not a valid top-k selection over scores [B,T,S], or None when they are.

    Valid: int64, every entry -1 or an allowed (finite-score) key, no repeats, exactly min(k, allowed) keys per
    query listed before the -1 padding, ascending.
    """
    B, T, S = scores.shape
    if indices.dtype != torch.int64 or tuple(indices.shape) != (B, T, k):
        return f"expected int64 [{B}, {T}, {k}], got {indices.dtype} {list(indices.shape)}"
    if ((indices < -1) | (indices >= S)).any():
        return "index outside [-1, S)"
    valid = indices >= 0
    picked = scores.gather(-1, indices.clamp(min=0))  # [B, T, k]
    if not torch.isfinite(picked[valid]).all():
        return "a selected key is not allowed (future or masked key)"
    n_allowed = torch.isfinite(scores).sum(-1).clamp(max=k)  # [B, T]
    if not torch.equal(valid.sum(-1), n_allowed):
        return "number of selected keys differs from min(k, allowed keys)"
    if not torch.equal(valid, torch.arange(k, device=indices.device) < n_allowed[..., None]):
        return "-1 padding is not at the end"
    a, b = indices[..., :-1], indices[..., 1:]
    if ((b <= a) & (b >= 0)).any():
        return "indices are not strictly ascending (repeated or unsorted key)"
    return None


def selected_scores(indices: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Scores of the selected keys, sorted per query ([B, T, k], -inf for -1): equal for equally good selections."""
    picked = scores.gather(-1, indices.clamp(min=0)).masked_fill(indices < 0, float("-inf"))
    return picked.sort(dim=-1).values


def same_selection(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor, atol: float = 1e-5) -> bool:
    """True when two selections pick equally-scored key sets (ties may be broken differently)."""
    sa, sb = selected_scores(a, scores), selected_scores(b, scores)
    return bool(torch.equal(sa == float("-inf"), sb == float("-inf"))) and bool(
        torch.allclose(sa.nan_to_num(neginf=0.0), sb.nan_to_num(neginf=0.0), atol=atol, rtol=1e-5)
    )
