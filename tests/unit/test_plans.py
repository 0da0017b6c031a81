"""Attention plans: every kind strictly causal, all-indexer = DSA, static = sink + window, shared = the source's
selection, top-p within its clamp, grouped K/V; plans validate and round-trip through JSON and model files."""

import dataclasses
import json

import pytest
import torch

from sparselens.config import AttentionPlan, ConfigError, LayerPlan
from sparselens.models import ModelConfig, build_model, capture
from sparselens.models.attention import expand_kv
from sparselens.models.selection import sink_window_indices, top_p_truncate

SMALL = dict(n_layers=3, d_model=32, n_heads=4, max_seq_len=160, indexer_heads=2, indexer_dim=8, topk=6)
IDX = LayerPlan.indexer_layer(2, 8, 6)
PLANS = {
    "indexer": (IDX, IDX, IDX),
    "top_p": (IDX, LayerPlan.indexer_layer(2, 8, 6, top_p=0.6, k_min=2), IDX),
    "shared": (IDX, LayerPlan.shared(0), LayerPlan.shared(1)),
    "static": (LayerPlan.static(2, 3), IDX, LayerPlan.static(0, 5)),
    "mixed": (LayerPlan.dense(), LayerPlan.indexer_layer(1, 4, 5), LayerPlan.shared(1)),
}


def plan_model(layers, backend: str | None = "reference", seed: int = 0, **changes):
    torch.manual_seed(seed)
    cfg = ModelConfig(attention="plan", plan=AttentionPlan(tuple(layers)), kernel_backend=backend, **SMALL | changes)
    return build_model(cfg).eval()


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
@pytest.mark.parametrize("mode", ["sparse", "dense_kl", "sparse_kl"])
@pytest.mark.parametrize("plan", list(PLANS))
def test_every_plan_is_causal_for_every_query_including_t_below_k(plan, mode, backend):
    model = plan_model(PLANS[plan], backend)
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 256, (2, 41), generator=gen)
    for t in (0, 2, 5, 17, 39):  # k = 6: queries 0..4 see fewer keys than k
        changed = tokens.clone()
        changed[:, t + 1 :] = torch.randint(0, 256, (2, 41 - t - 1), generator=gen)
        with torch.no_grad():
            a, b = model(changed, mode=mode), model(tokens, mode=mode)
        assert torch.equal(a[:, : t + 1], b[:, : t + 1]), f"position <= {t} changed"
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # later logits do move: the test can fail


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
def test_an_all_indexer_plan_at_the_runs_k_is_the_dsa_model(backend):
    torch.manual_seed(0)
    dsa = build_model(ModelConfig(attention="dsa", kernel_backend=backend, **SMALL)).eval()
    plan = plan_model(PLANS["indexer"], backend)
    assert plan.load_state_dict(dsa.state_dict()) is not None  # strict: the same parameters under the same names
    tokens = torch.randint(0, 256, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = dsa(tokens), plan(tokens)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


def _hand_built_sink_window(model, layer: int, tokens, sinks: int, window: int) -> torch.Tensor:
    """The layer's output computed here: dense softmax restricted to sink + window keys by an explicit mask."""
    block = model.blocks[layer]
    seen = {}
    handle = block.attn.register_forward_hook(lambda _m, args, _out: seen.update(h=args[0], state=args[1]))
    with torch.no_grad():
        model(tokens)
    handle.remove()
    attn, h = block.attn, seen["h"]
    q, k, v = attn.project(h, seen["state"])
    k, v = expand_kv(k, q.shape[2]), expand_kv(v, q.shape[2])  # [B, T, H, D]
    t = tokens.shape[1]
    pos = torch.arange(t)
    allowed = (pos[None, :] <= pos[:, None]) & ((pos[None, :] < sinks) | (pos[None, :] > pos[:, None] - window))
    scores = torch.einsum("bthd,bshd->bhts", q, k) * attn.scale
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    out = torch.einsum("bhts,bshd->bthd", p, v)
    return attn.proj(out.reshape(h.shape))


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
def test_a_static_layer_is_hand_built_sink_plus_window_attention(backend):
    model = plan_model(PLANS["static"], backend)
    tokens = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(2))
    for layer, (s, w) in ((0, (2, 3)), (2, (0, 5))):
        got = {}
        handle = model.blocks[layer].attn.register_forward_hook(lambda _m, _a, out, got=got: got.update(y=out[0]))
        with torch.no_grad():
            model(tokens)
        handle.remove()
        want = _hand_built_sink_window(model, layer, tokens, s, w)
        torch.testing.assert_close(got["y"], want, rtol=1e-4, atol=1e-6)


def test_sink_window_indices_are_canonical_and_exact():
    idx = sink_window_indices(6, 10, sinks=2, window=3)  # queries at positions 4..9
    assert idx.tolist() == [
        [0, 1, 2, 3, 4],
        [0, 1, 3, 4, 5],
        [0, 1, 4, 5, 6],
        [0, 1, 5, 6, 7],
        [0, 1, 6, 7, 8],
        [0, 1, 7, 8, 9],
    ]
    early = sink_window_indices(4, 4, sinks=3, window=2)  # queries 0..3: fewer keys than the budget, -1 last
    assert early.tolist() == [[0, -1, -1, -1, -1], [0, 1, -1, -1, -1], [0, 1, 2, -1, -1], [0, 1, 2, 3, -1]]


def test_a_shared_layer_uses_exactly_its_source_layers_indices():
    model = plan_model(PLANS["shared"])
    names = [f"blocks.{i}.attn.hook_selection" for i in range(3)] + ["blocks.0.indexer.hook_topk"]
    c = capture(model, torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(3)), names)
    assert torch.equal(c["blocks.0.attn.hook_selection"], c["blocks.0.indexer.hook_topk"])
    assert torch.equal(c["blocks.1.attn.hook_selection"], c["blocks.0.indexer.hook_topk"])
    assert torch.equal(c["blocks.2.attn.hook_selection"], c["blocks.0.indexer.hook_topk"])
    assert not hasattr(model.blocks[1], "indexer") or model.blocks[1].indexer is None  # no indexer, no cost


def test_top_p_keeps_k_within_its_clamp_and_the_fewest_keys_reaching_p():
    model = plan_model(PLANS["top_p"])
    c = capture(model, torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(4)), None)
    idx = c["blocks.1.attn.hook_selection"]  # [B, T, 6]
    n = (idx >= 0).sum(-1)
    visible = torch.arange(64).clamp(max=5) + 1  # keys a query can see, capped at k
    assert bool(((n >= torch.minimum(visible, torch.tensor(2))) & (n <= 6)).all())
    assert n.float().std() > 0  # really adaptive on this input
    # the rule itself, on hand-made logits: mass 0.5, 0.3, 0.1, 0.1 -> p = 0.75 keeps the two heaviest keys
    logits = torch.log(torch.tensor([[[0.1, 0.5, 0.1, 0.3]]]))
    kept = top_p_truncate(torch.tensor([[[2, 5, 7, 9]]]), logits, top_p=0.75, k_min=1)
    assert kept.tolist() == [[[5, 9, -1, -1]]]
    assert top_p_truncate(torch.tensor([[[2, 5, 7, 9]]]), logits, top_p=0.75, k_min=3).tolist() == [[[2, 5, 9, -1]]]


def test_grouped_kv_model_is_causal_and_mha_plan_keeps_the_parameter_shapes():
    mqa = plan_model(PLANS["mixed"], n_kv_heads=1)
    assert mqa.blocks[0].attn.qkv.weight.shape == (32 + 2 * 8, 32)  # d + 2 * HKV * head_dim
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(5))
    changed = tokens.clone()
    changed[:, 11:] = 0
    with torch.no_grad():
        assert torch.equal(mqa(tokens)[:, :11], mqa(changed)[:, :11])
    assert plan_model(PLANS["mixed"]).blocks[0].attn.qkv.weight.shape == (96, 32)


def test_plans_validate_and_round_trip_through_json_and_model_files(tmp_path):
    plan = AttentionPlan(PLANS["mixed"])
    assert AttentionPlan.from_json(plan.to_json()) == plan
    assert AttentionPlan.from_dict(json.loads(json.dumps(dataclasses.asdict(plan)))) == plan
    cfg = ModelConfig(attention="plan", plan=plan, **SMALL)
    assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    with pytest.raises(ConfigError, match="only earlier layers"):
        AttentionPlan((IDX, LayerPlan.shared(1), IDX))
    with pytest.raises(ConfigError, match="dense"):
        AttentionPlan((LayerPlan.dense(), LayerPlan.shared(0)))
    with pytest.raises(ConfigError, match="one entry per layer"):
        ModelConfig(attention="plan", plan=AttentionPlan((IDX,)), **SMALL)
    with pytest.raises(ConfigError, match='attention="plan"'):
        ModelConfig(attention="dsa", plan=plan, **SMALL)
    with pytest.raises(ConfigError, match="k_min"):
        LayerPlan.indexer_layer(2, 8, 6, top_p=0.9, k_min=9)
    with pytest.raises(ConfigError, match="takes no"):
        LayerPlan("static", sinks=1, window=2, topk=3)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)


def test_oracle_mode_reads_each_querys_heaviest_dense_keys_and_is_causal():
    model = plan_model(PLANS["shared"])
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(6))
    names = ["blocks.1.attn.hook_selection", "blocks.1.attn.hook_dense_pattern"]
    handles, seen = [], {}
    modules = dict(model.named_modules())
    for n in names:
        handles.append(modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.update({n: out})))
    with torch.no_grad():
        model(tokens, mode="oracle")
    for h in handles:
        h.remove()
    idx, dense = seen[names[0]], seen[names[1]].sum(1)  # [B, T, k], [B, T, S]
    picked = torch.gather(dense, -1, idx.clamp(min=0)).masked_fill(idx < 0, 0).sum(-1)  # [B, T]
    best = dense.topk(6, dim=-1).values.sum(-1)
    torch.testing.assert_close(picked, best)
    assert int((idx - torch.arange(30)[None, :, None]).max()) <= 0  # never a future key
    with torch.no_grad():
        changed = tokens.clone()
        changed[:, 9:] = 1
        assert torch.equal(model(tokens, mode="oracle")[:, :9], model(changed, mode="oracle")[:, :9])


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_grouped_kv_dsa_trains_through_the_fast_path_like_the_reference(n_kv_heads):
    """MQA/GQA DSA: the sparse-stage loss and every gradient agree between the fast kernels and the reference."""
    torch.manual_seed(0)
    cfg = ModelConfig(attention="dsa", n_kv_heads=n_kv_heads, kernel_backend=None, **SMALL)
    fast = build_model(cfg)
    ref = build_model(dataclasses.replace(cfg, kernel_backend="reference"))
    ref.load_state_dict(fast.state_dict())
    tokens = torch.randint(0, 256, (2, 41), generator=torch.Generator().manual_seed(8))
    losses = []
    for model in (fast, ref):
        logits, kl = model(tokens[:, :-1], mode="sparse_kl", return_kl=True)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:]) + kl
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert fast.blocks[0].attn.qkv.weight.grad[32 + 8 * n_kv_heads :].abs().sum() > 0  # V rows get gradient
