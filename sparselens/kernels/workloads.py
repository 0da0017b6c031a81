"""Synthetic DSA workloads for kernel tests and benchmarks: indexer inputs whose top-k looks random or trained.

`"random"`: Gaussian q, k and w; the selection is scattered uniformly over the causal prefix.
`"trained_like"`: structured inputs whose top-k has what trained indexers pick (DESIGN.md, phase-1 patterns): a
few attention-sink keys, a recent-token window, and content matches clustered in short spans. Half of the
indexer dims carry a rotary code of position (scores peak at distance 0 and decay), the sink keys share a
direction every query weights highly, and key content comes in runs so neighbouring keys match together.
A captured workload from a real model plugs in through `load_indexer_inputs`.
"""

from pathlib import Path

import torch

POS_GAIN, CONTENT_GAIN, SINK_GAIN = 2.0, 0.5, 6.0  # tuned so k=256 at L=4096-8192 picks ~40% local, sinks, clusters


def random_indexer_inputs(B: int, T: int, S: int, HI: int, DI: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gaussian indexer inputs: q [B,T,HI,DI], k [B,S,DI], w [B,T,HI] (fp32, CPU)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "q": torch.randn(B, T, HI, DI, generator=g),
        "k": torch.randn(B, S, DI, generator=g),
        "w": torch.randn(B, T, HI, generator=g),
    }


def trained_like_indexer_inputs(
    B: int, T: int, S: int, HI: int, DI: int, seed: int = 0, n_sink: int = 4, span: int = 16, q_span: int = 64
) -> dict[str, torch.Tensor]:
    """Indexer inputs whose top-k mixes sinks, a local window and clustered content (shapes as the random ones).

    Args:
        n_sink: leading keys that every query scores highly (attention sinks).
        span: length of the runs of keys sharing one content vector (content matches come in clusters).
        q_span: length of the runs of queries sharing their content lookups (neighbours select alike).
    """
    g = torch.Generator().manual_seed(seed)
    half = DI // 2
    n_freq = half // 2
    pos_k = torch.arange(S, dtype=torch.float32)
    pos_q = pos_k[S - T :] if T <= S else torch.arange(S - T, S, dtype=torch.float32)
    freq = 2 * torch.pi / (400.0 * 8.0 ** (torch.arange(n_freq, dtype=torch.float32) / max(1, n_freq)))  # 400..3200

    def rotary(pos: torch.Tensor) -> torch.Tensor:
        ang = pos[:, None] * freq[None, :]  # [P, n_freq]
        return torch.cat([ang.cos(), ang.sin()], dim=-1)  # [P, 2 * n_freq], half-split layout

    content = torch.randn(B, -(-S // span), DI - half, generator=g)
    k = torch.empty(B, S, DI)
    k[..., :half] = 0.0
    k[..., : 2 * n_freq] = rotary(pos_k)
    k[..., half:] = content.repeat_interleave(span, dim=1)[:, :S] + 0.3 * torch.randn(B, S, DI - half, generator=g)
    k[:, : min(n_sink, S), half:] = SINK_GAIN * torch.ones(DI - half) / (DI - half) ** 0.5  # sink direction
    q = torch.zeros(B, T, HI, DI)
    q[..., : 2 * n_freq] = POS_GAIN * rotary(pos_q)[None, :, None, :]  # locality: q.k ~ sum cos(freq * distance)
    lookups = torch.randn(B, -(-T // q_span), HI, DI - half, generator=g).repeat_interleave(q_span, dim=1)[:, :T]
    q[..., half:] = CONTENT_GAIN * (lookups + 0.5 * torch.randn(B, T, HI, DI - half, generator=g))  # in runs
    q[:, :, 0, half:] += SINK_GAIN * torch.ones(DI - half) / (DI - half) ** 0.5  # head 0 also looks for the sinks
    w = (torch.rand(B, T, HI, generator=g) + 0.5) / (HI * DI) ** 0.5
    return {"q": q, "k": k, "w": w}


def load_indexer_inputs(path: str | Path) -> dict[str, torch.Tensor]:
    """Indexer inputs captured from a trained model: a `torch.save`d dict with q [B,T,HI,DI], k [B,S,DI], w [B,T,HI].

    (For example the inputs of one DSA layer's indexer, captured with `sparselens.models.capture`.)
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"q", "k", "w"} - set(data)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}: save a dict with q [B,T,HI,DI], k [B,S,DI], w [B,T,HI]")
    return {name: data[name].float() for name in ("q", "k", "w")}


def sliding_window_indices(B: int, T: int, S: int, K: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Each query's K most recent keys, itself included (query t sits at key S - T + t), laid out as `topk_indices`
    returns them: [B, T, K] int64, ascending, then -1 where fewer than K keys exist. What a sliding-window head
    selects, and the best case for block-sparse tiles (dense runs of keys)."""
    pos = torch.arange(S - T, S, device=device).view(T, 1)  # [T, 1] each query's own key position
    idx = (pos - K + 1).clamp(min=0) + torch.arange(K, device=device).view(1, K)  # [T, K]
    return torch.where(idx <= pos, idx, -1).expand(B, T, K).clone()


INDEXER_INPUTS = {"random": random_indexer_inputs, "trained_like": trained_like_indexer_inputs}


def random_indices(B: int, T: int, S: int, K: int, seed: int = 0, p_invalid: float = 0.1) -> torch.Tensor:
    """Arbitrary index lists [B,T,K] int64 in [-1, S) with repeats, unsorted, some -1 (stress input, not causal)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, max(S, 1), (B, T, K), generator=g)
    return idx.masked_fill(torch.rand(B, T, K, generator=g) < p_invalid, -1)
