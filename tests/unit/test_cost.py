"""The analytic cost model against torch's FlopCounterMode on the matmul parts, and its causal arithmetic by hand."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sparselens.analysis.cost import (
    cache_bytes_per_token,
    cost_table,
    decode_bytes,
    indexer_attention_ratio,
    layer_costs,
    token_costs,
)
from sparselens.config import AttentionPlan, LayerPlan
from sparselens.models import ModelConfig, build_model

SMALL = dict(n_layers=3, d_model=32, n_heads=4, indexer_heads=2, indexer_dim=8, topk=6, kernel_backend="reference")
CONFIGS = {
    "dense": ModelConfig(attention="dense", **SMALL),
    "dsa": ModelConfig(attention="dsa", **SMALL),
    "plan_gqa": ModelConfig(
        attention="plan",
        n_kv_heads=2,
        plan=AttentionPlan((LayerPlan.static(2, 3), LayerPlan.indexer_layer(1, 4, 5), LayerPlan.shared(1))),
        **SMALL,
    ),
}


def _module_macs(counts: dict, name: str) -> float:
    return sum(counts.get(name, {}).values()) / 2  # FLOPs -> multiply-adds


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matmul_parts_match_flop_counter_mode(name):
    cfg, t = CONFIGS[name], 40
    model = build_model(cfg).eval()
    # torch counts no FLOPs for SDPA on CPU: a listener on a dense layer's hook_pattern makes it compute explicit
    # [T, S] products (einsum -> bmm), which are counted
    dense_layers = [b.attn for b in model.blocks if not b.attn.plan.sparse]
    handles = [attn.hook_pattern.register_forward_hook(lambda *_: None) for attn in dense_layers]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 256, (1, t)))
    for handle in handles:
        handle.remove()
    counts = counter.get_flop_counts()
    want = token_costs(cfg, t)  # the projections do not depend on the length or the mode
    got_qkv_o = sum(_module_macs(counts, f"GPT.blocks.{i}.attn.{m}") for i in range(3) for m in ("qkv", "proj"))
    got_mlp = sum(_module_macs(counts, f"GPT.blocks.{i}.mlp") for i in range(3))
    got_proj = sum(_module_macs(counts, f"GPT.blocks.{i}.indexer.{m}") for i in range(3) for m in ("wq", "wk", "ww"))
    assert got_qkv_o == t * want["qkv_o"]
    assert got_mlp == t * want["mlp"]
    assert got_proj == t * want["indexer_proj"]
    assert _module_macs(counts, "GPT.head") == t * want["lm_head"]
    # Attention cores: the reference kernels and SDPA compute every query against all T keys (indexer scores,
    # SDPA) or all k slots (gathered attention), i.e. what "decode" mode counts for one query seeing T keys.
    core = 0.0
    for layer in range(3):
        one = layer_costs(cfg, layer, t, "decode", {})
        core += t * (one["indexer_scoring"] + one["sparse_attn"] + one["dense_attn"])
    batched = sum(v for k, v in counts["Global"].items() if "mm" not in str(k) or "bmm" in str(k))
    assert batched / 2 == core


def test_causal_prefill_counts_by_hand():
    cfg = CONFIGS["dsa"]
    costs = token_costs(cfg, 10, "prefill")
    # position t sees t + 1 keys: mean 5.5 keys scanned; selected min(6, t + 1): (1+2+3+4+5+6*5) / 10 = 4.5
    assert costs["indexer_scoring"] == 3 * 2 * 8 * 5.5
    assert costs["sparse_attn"] == 3 * 2 * 4 * 8 * 4.5
    assert costs["dense_attn"] == 0
    dense = token_costs(CONFIGS["dense"], 10, "prefill")
    assert dense["dense_attn"] == 3 * 2 * 4 * 8 * 5.5
    decode = token_costs(cfg, 1000, "decode")
    assert decode["sparse_attn"] == 3 * 2 * 4 * 8 * 6 and decode["topk"] == 3 * 1000
    assert decode["attention"] == sum(
        decode[c] for c in ("indexer_scoring", "indexer_weighting", "topk", "sparse_attn")
    )


def test_plan_costs_count_only_what_each_layer_does():
    cfg = CONFIGS["plan_gqa"]
    costs = token_costs(cfg, 1000, "decode", mean_k={1: 3.5})
    assert costs["indexer_scoring"] == 1 * 4 * 1000  # only layer 1 has an indexer (HI 1, DI 4)
    assert costs["sparse_attn"] == 2 * 4 * 8 * (5 + 3.5 + 3.5)  # static 2 + 3, measured k 3.5, shared from 1
    assert indexer_attention_ratio(cfg.layer_plan(1), cfg) == 4 / 64
    assert indexer_attention_ratio(cfg.layer_plan(0), cfg) is None
    assert cache_bytes_per_token(cfg) == {"kv": 3 * 2 * 2 * 8 * 4, "index_keys": 4 * 4, "total": 3 * 2 * 2 * 8 * 4 + 16}
    assert decode_bytes(cfg, 1000, mean_k={1: 3.5})["index_keys_scanned"] == 4 * 4 * 1000
    table = cost_table(CONFIGS, (16, 64))
    assert set(table["model"]) == set(CONFIGS) and (table["value"] >= 0).all()
    with pytest.raises(ValueError, match="mode"):
        token_costs(cfg, 10, "train")
