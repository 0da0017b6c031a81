"""The analytic cost model: multiply-adds per token and bytes per decoded token, for any ModelConfig or plan.

Counts are multiply-adds (MACs; FLOPs = 2 x MACs) per token, summed over layers, split into
- `qkv_o`: the Q, K, V and output projections;        - `mlp`: the SwiGLU MLP;        - `lm_head`: the logits;
- `indexer_proj`: an indexer layer's q, k and weight projections;
- `indexer_scoring`: q . k of every indexer head against every allowed key (HI * DI per key);
- `indexer_weighting`: w * ReLU(.) summed over the indexer heads (HI per key);
- `topk`: one comparison per scanned key to keep the k best (what the selection costs at least);
- `sparse_attn`: scores and weighted values over the selected keys only (2 * H * dh per selected key);
- `dense_attn`: the same over every allowed key.
`attention` = the last five, the part a sparse design changes. "prefill" averages over the L positions of a
causal sequence (position t sees t + 1 keys); "decode" is one new token with L keys visible (itself included).

Per key, an indexer costs HI * DI against 2 * H * dh for dense attention: the quick preset's 4 * 64 = 256 equals
2 * 4 * 32 = 256, so its DSA model pays a dense-attention-sized indexer on top of the sparse gather.

Decode traffic (`decode_bytes`): per layer, K and V rows read (every key for dense, the selected ones for sparse)
plus the indexer keys scanned (every cached key of an indexer layer). `cache_bytes_per_token`: what the decode
cache stores per position (K/V of every layer and the indexer keys of indexer layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from sparselens.config import LayerPlan, ModelConfig

CATEGORIES = (
    "qkv_o",
    "mlp",
    "lm_head",
    "indexer_proj",
    "indexer_scoring",
    "indexer_weighting",
    "topk",
    "sparse_attn",
    "dense_attn",
)
ATTENTION = ("indexer_scoring", "indexer_weighting", "topk", "sparse_attn", "dense_attn")


def mlp_hidden(cfg: ModelConfig) -> int:
    """SwiGLU hidden width, as models/gpt.py builds it."""
    return 16 * math.ceil(cfg.mlp_ratio * cfg.d_model / 16)


def _mean_selected(limit: float, length: int, mode: str) -> float:
    """Mean over queries of min(limit, keys visible): prefill positions 0..L-1 see 1..L keys, decode sees L."""
    if mode == "decode":
        return min(limit, length)
    full = min(int(limit), length)  # positions 0 .. full-1 see fewer than `limit` keys
    return (full * (full + 1) / 2 + (length - full) * limit) / length


def _visible(length: int, mode: str) -> float:
    return length if mode == "decode" else (length + 1) / 2


def layer_selected(cfg: ModelConfig, layer: int, length: int, mode: str, mean_k: Mapping[int, float]) -> float:
    """Keys one query of `layer` reads on average (all visible ones for dense)."""
    plan = cfg.layer_plan(layer)
    if plan.kind == "shared":
        return layer_selected(cfg, plan.source, length, mode, mean_k)
    if plan.kind == "dense":
        return _visible(length, mode)
    limit = mean_k.get(layer, plan.max_keys)  # a measured mean k of an adaptive layer, else its budget
    return _mean_selected(limit, length, mode)


def layer_costs(cfg: ModelConfig, layer: int, length: int, mode: str, mean_k: Mapping[int, float]) -> dict[str, float]:
    """Multiply-adds per token of one layer (CATEGORIES except lm_head)."""
    d, dh, plan = cfg.d_model, cfg.head_dim, cfg.layer_plan(layer)
    out = dict.fromkeys(CATEGORIES, 0.0)
    out["qkv_o"] = d * (d + 2 * cfg.n_kv_heads * dh) + d * d
    out["mlp"] = 3 * d * mlp_hidden(cfg)
    per_key = 2 * cfg.n_heads * dh
    if plan.kind == "dense":
        out["dense_attn"] = per_key * _visible(length, mode)
        return out
    out["sparse_attn"] = per_key * layer_selected(cfg, layer, length, mode, mean_k)
    if plan.kind == "indexer":
        hi, di = plan.indexer_heads, plan.indexer_dim
        scanned = _visible(length, mode)
        out["indexer_proj"] = d * (hi * di + di + hi)
        out["indexer_scoring"] = hi * di * scanned
        out["indexer_weighting"] = hi * scanned
        out["topk"] = scanned
    return out


def token_costs(
    cfg: ModelConfig, length: int, mode: str = "prefill", mean_k: Mapping[int, float] | None = None
) -> dict[str, float]:
    """Multiply-adds per token at `length`, per category (module docstring), plus `attention` and `total`.

    mode: "prefill" (mean over a causal sequence of `length`) or "decode" (one token, `length` keys visible).
    mean_k: {layer: measured mean keys per query} for adaptive-k layers (default: their k_max, an upper bound).
    """
    if mode not in ("prefill", "decode"):
        raise ValueError(f"mode={mode!r}: use 'prefill' (mean over a causal sequence) or 'decode' (one new token)")
    if length <= 0:
        raise ValueError(f"length={length} must be a positive number of tokens")
    total = dict.fromkeys(CATEGORIES, 0.0)
    for layer in range(cfg.n_layers):
        for name, value in layer_costs(cfg, layer, length, mode, mean_k or {}).items():
            total[name] += value
    total["lm_head"] = cfg.d_model * cfg.vocab_size
    total["attention"] = sum(total[name] for name in ATTENTION)
    total["total"] = sum(total[name] for name in CATEGORIES)
    return total


def indexer_attention_ratio(plan: LayerPlan, cfg: ModelConfig) -> float | None:
    """Per key, the indexer's multiply-adds over dense attention's: HI * DI / (2 * H * dh); None without one."""
    if plan.kind != "indexer":
        return None
    return plan.indexer_heads * plan.indexer_dim / (2 * cfg.n_heads * cfg.head_dim)


def cache_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 4) -> dict[str, int]:
    """Bytes the decode cache stores per position: K/V of every layer, indexer keys of indexer layers."""
    kv = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * dtype_bytes
    keys = sum(p.indexer_dim for p in map(cfg.layer_plan, range(cfg.n_layers)) if p.kind == "indexer")
    return {"kv": kv, "index_keys": keys * dtype_bytes, "total": kv + keys * dtype_bytes}


def decode_bytes(
    cfg: ModelConfig, context: int, dtype_bytes: int = 4, mean_k: Mapping[int, float] | None = None
) -> dict[str, float]:
    """Bytes one decoded token reads from the cache at `context` keys: K/V rows gathered, indexer keys scanned."""
    row = 2 * cfg.n_kv_heads * cfg.head_dim * dtype_bytes  # one key's K and V, all K/V heads
    kv = keys = 0.0
    for layer in range(cfg.n_layers):
        plan = cfg.layer_plan(layer)
        kv += row * layer_selected(cfg, layer, context, "decode", mean_k or {})
        if plan.kind == "indexer":
            keys += plan.indexer_dim * dtype_bytes * context
    return {"kv_gathered": kv, "index_keys_scanned": keys, "total": kv + keys}


def cost_table(
    models: Mapping[str, ModelConfig],
    lengths: tuple[int, ...],
    mean_k: Mapping[str, Mapping[int, float]] | None = None,
) -> pd.DataFrame:
    """Long table: model, mode, length, category (CATEGORIES, attention, total, decode_bytes, cache_bytes), value."""
    rows = []
    for name, cfg in models.items():
        measured = (mean_k or {}).get(name, {})
        for length in lengths:
            for mode in ("prefill", "decode"):
                for category, value in token_costs(cfg, length, mode, measured).items():
                    rows.append({"model": name, "mode": mode, "length": length, "category": category, "value": value})
            rows.append(
                {
                    "model": name,
                    "mode": "decode",
                    "length": length,
                    "category": "decode_bytes",
                    "value": decode_bytes(cfg, length, mean_k=measured)["total"],
                }
            )
        per_token = cache_bytes_per_token(cfg)["total"]
        rows.append({"model": name, "mode": "cache", "length": 1, "category": "cache_bytes", "value": per_token})
    return pd.DataFrame(rows)
