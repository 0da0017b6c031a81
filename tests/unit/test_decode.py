"""Incremental decoding: prefill (whole, chunked, shorter than k) then one-token steps give the full forward's logits
for dense, DSA, MQA/GQA and every plan kind; the cache holds exactly the recomputed K/V and indexer keys."""

import pytest
import torch

from sparselens.config import AttentionPlan, LayerPlan
from sparselens.models import ModelConfig, build_model, capture

SMALL = dict(n_layers=3, d_model=32, n_heads=4, max_seq_len=300, indexer_heads=2, indexer_dim=8, topk=6)
IDX = LayerPlan.indexer_layer(2, 8, 6)
KINDS = {
    "dense": dict(attention="dense"),
    "dsa": dict(attention="dsa"),
    "dsa_mqa": dict(attention="dsa", n_kv_heads=1),
    "dense_gqa": dict(attention="dense", n_kv_heads=2),
    "plan_static_shared": dict(
        attention="plan", plan=AttentionPlan((LayerPlan.static(2, 4), IDX, LayerPlan.shared(1)))
    ),
    "plan_top_p_dense": dict(
        attention="plan",
        plan=AttentionPlan((LayerPlan.dense(), LayerPlan.indexer_layer(2, 8, 6, top_p=0.7, k_min=2), IDX)),
        n_kv_heads=2,
    ),
}


def err_ratio(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def model_of(kind: str, backend: str | None):
    torch.manual_seed(0)
    return build_model(ModelConfig(kernel_backend=backend, **SMALL | KINDS[kind])).eval()


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("chunks", [(4,), (13,), (5, 9, 1)], ids=["prefill_below_k", "prefill", "chunked"])
def test_prefill_then_one_token_steps_equal_the_full_forward(kind, chunks, backend):
    model = model_of(kind, backend)
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(tokens)  # [B, T, V]
        cache = model.new_cache(2)
        parts, at = [], 0
        for size in chunks:
            parts.append(model(tokens[:, at : at + size], cache=cache))
            at += size
        while at < tokens.shape[1]:
            parts.append(model(tokens[:, at : at + 1], cache=cache))
            at += 1
    got = torch.cat(parts, dim=1)
    assert cache.length == 40
    assert err_ratio(got, want) <= 1e-5
    assert err_ratio(got[:, 20:], want[:, 20:]) <= 1e-5  # the decoded steps alone, not hidden by the prefill


def test_cached_keys_equal_recomputed_ones():
    model = model_of("plan_static_shared", "reference")
    tokens = torch.randint(0, 256, (1, 25), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model.new_cache(1)
        model(tokens[:, :10], cache=cache)
        for i in range(10, 25):
            model(tokens[:, i : i + 1], cache=cache)
        state = {}
        hook = model.blocks[1].attn.register_forward_hook(lambda _m, args, _o: state.update(h=args[0], s=args[1]))
        model(tokens)
        hook.remove()
        q, k, v = model.blocks[1].attn.project(state["h"], state["s"])
        _, ki, _ = model.blocks[1].indexer.project(state["h"], state["s"])
    layer = cache.layers[1]
    torch.testing.assert_close(layer.k.buf[:, :25], k, rtol=1e-5, atol=1e-6)  # [B, S, HKV, D], after RoPE
    torch.testing.assert_close(layer.v.buf[:, :25], v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.index_k.buf[:, :25], ki, rtol=1e-5, atol=1e-6)  # [B, S, DI]
    assert cache.layers[0].index_k.buf is None  # a static layer keeps no indexer keys
    assert cache.kv_bytes() == 25 * 4 * (3 * 2 * 32 + 8)  # K and V of 3 layers (HKV 4 x D 8) + one DI-8 indexer


def test_decode_selections_are_the_full_forwards_and_never_look_ahead():
    model = model_of("dsa", None)
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(3))
    names = [f"blocks.{i}.indexer.hook_topk" for i in range(3)]
    full = capture(model, tokens, names)
    cache = model.new_cache(2)
    with torch.no_grad():
        model(tokens[:, :12], cache=cache)
    step = {}
    handles = [
        dict(model.named_modules())[n].register_forward_hook(lambda _m, _i, out, n=n: step.update({n: out}))
        for n in names
    ]
    with torch.no_grad():
        model(tokens[:, 12:13], cache=cache)
    for h in handles:
        h.remove()
    for n in names:
        assert torch.equal(step[n][:, 0], full[n][:, 12])
        assert int(step[n].max()) <= 12


def test_a_cache_refuses_another_batch_and_running_past_max_seq_len():
    model = model_of("dense", None)
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="one cache per batch"):
        model(torch.zeros(3, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(2, 301, dtype=torch.long), cache=cache)
