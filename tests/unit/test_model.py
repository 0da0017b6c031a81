"""Models: strict causality for every kind, DSA selection never looks ahead, DSA equals dense when k >= T."""

import pytest
import torch

from sparselens.config import ConfigError
from sparselens.models import ModelConfig, build_model, capture, hook_names

SMALL = dict(n_layers=2, d_model=32, n_heads=2, max_seq_len=128, indexer_heads=2, indexer_dim=8)


def make(attention: str, topk: int = 8, backend: str | None = "reference", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(attention=attention, topk=topk, kernel_backend=backend, **SMALL)).eval()


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
@pytest.mark.parametrize("attention", ["dense", "dsa"])
@pytest.mark.parametrize("t", [0, 3, 7, 20, 44], ids=lambda t: f"t{t}")
def test_future_tokens_never_change_past_logits(attention, t, backend):
    model = make(attention, topk=8, backend=backend)
    gen = torch.Generator().manual_seed(t)
    tokens = torch.randint(0, 256, (2, 45), generator=gen)
    changed = tokens.clone()
    changed[:, t + 1 :] = torch.randint(0, 256, (2, 45 - t - 1), generator=gen)
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    if t + 1 < 45:
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the test can fail: later logits do change


def run_hooked(model, tokens, names, **kwargs):
    """`model(tokens, **kwargs)` (e.g. a mode and return_kl) while saving the named hooks: (output, {name: tensor})."""
    cache, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        handles.append(modules[name].register_forward_hook(lambda _m, _i, out, name=name: cache.update({name: out})))
    try:
        with torch.no_grad():
            out = model(tokens, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out, cache


PER_POSITION = ("attn.hook_pattern", "attn.hook_attn_scores", "indexer.hook_topk", "indexer.hook_scores")


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
@pytest.mark.parametrize("mode", ["sparse", "dense_kl", "sparse_kl"])
@pytest.mark.parametrize("t", [0, 3, 7, 20, 44], ids=lambda t: f"t{t}")
def test_every_dsa_mode_is_causal_in_logits_and_per_query_tensors(mode, t, backend):
    # t < k = 8 included: a query that sees fewer than k keys must not fill its budget from the future
    model = make("dsa", topk=8, backend=backend)
    gen = torch.Generator().manual_seed(100 + t)
    tokens = torch.randint(0, 256, (2, 45), generator=gen)
    changed = tokens.clone()
    changed[:, t + 1 :] = torch.randint(0, 256, (2, 45 - t - 1), generator=gen)
    with torch.no_grad():
        (a, kl_a), (b, kl_b) = (model(x, mode=mode, return_kl=True) for x in (tokens, changed))
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert torch.isfinite(kl_a) and torch.isfinite(kl_b)
    if t + 1 < 45:
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the test can fail: later logits do change
    names = [f"blocks.{i}.{hook}" for i in range(2) for hook in PER_POSITION]
    (_, _), hooked_a = run_hooked(model, tokens, names, mode=mode, return_kl=True)
    (_, _), hooked_b = run_hooked(model, changed, names, mode=mode, return_kl=True)
    for name in names:  # rows of queries <= t: [B, (H,) Q, ...] with Q second to last for maps, second for topk
        qdim = 1 if name.endswith(("hook_topk", "hook_scores")) else 2
        rows_a, rows_b = hooked_a[name].narrow(qdim, 0, t + 1), hooked_b[name].narrow(qdim, 0, t + 1)
        assert torch.equal(rows_a, rows_b), name


def test_indexer_never_selects_a_future_key():
    model = make("dsa", topk=8)
    tokens = torch.randint(0, 256, (3, 37))
    cache = capture(model, tokens, lambda n: n.endswith("hook_topk"))
    assert len(cache) == 2
    pos = torch.arange(37).view(1, 37, 1)
    for idx in cache.values():
        assert idx.shape == (3, 37, 8) and idx.dtype == torch.int64
        assert (idx <= pos).all()
        valid = (idx >= 0).sum(-1)  # query t has min(k, t+1) allowed keys
        assert torch.equal(valid, torch.minimum(torch.full_like(valid, 8), pos.squeeze(-1) + 1))
        for row in idx.reshape(-1, 8):
            kept = row[row >= 0]
            assert kept.unique().numel() == kept.numel()


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
def test_dsa_equals_dense_when_k_covers_every_key(backend):
    dense = make("dense")
    dsa = make("dsa", topk=40, backend=backend)
    missing, _ = dsa.load_state_dict(dense.state_dict(), strict=False), None
    assert all(".indexer." in n for n in missing.missing_keys)
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        err = (dsa(tokens) - dense(tokens)).abs().max().item()
    assert err < 1e-5


def test_hooks_have_documented_shapes_and_sparse_pattern_is_zero_off_selection():
    model = make("dsa", topk=5)
    tokens = torch.randint(0, 256, (2, 23))
    names = hook_names(model)
    for want in (
        "blocks.1.attn.hook_attn_scores",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_dense_pattern",
        "blocks.1.indexer.hook_scores",
        "blocks.1.indexer.hook_head_scores",
        "blocks.1.indexer.hook_weights",
        "blocks.1.indexer.hook_topk",
    ):
        assert want in names
    c = capture(model, tokens, None)
    assert c["blocks.0.attn.hook_pattern"].shape == (2, 2, 23, 23)
    assert c["blocks.0.indexer.hook_head_scores"].shape == (2, 2, 23, 23)
    assert c["blocks.0.indexer.hook_weights"].shape == (2, 23, 2)
    pattern, idx = c["blocks.0.attn.hook_pattern"], c["blocks.0.indexer.hook_topk"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 23))
    selected = torch.zeros(2, 23, 24, dtype=torch.bool).scatter_(-1, torch.where(idx >= 0, idx, 23), True)[..., :23]
    assert (pattern[~selected.unsqueeze(1).expand_as(pattern)] == 0).all()
    scores = c["blocks.0.indexer.hook_scores"]
    assert torch.isinf(scores.triu(1)[:, torch.ones(23, 23).triu(1).bool()]).all()
    head = c["blocks.0.indexer.hook_head_scores"]
    finite = torch.isfinite(scores)
    torch.testing.assert_close(head.sum(1)[finite], scores[finite], rtol=1e-5, atol=1e-5)


def test_capture_rejects_unknown_hook_names():
    with pytest.raises(KeyError, match="unknown hook names"):
        capture(make("dense"), torch.zeros(1, 4, dtype=torch.long), ["blocks.0.attn.hook_nope"])


@pytest.mark.parametrize("bad", [0, -3])
def test_nonpositive_k_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="topk"):
        ModelConfig(attention="dsa", topk=bad)


def test_kl_modes_return_finite_losses_with_gradients_only_on_the_indexer():
    model = make("dsa", topk=6).train()
    tokens = torch.randint(0, 256, (2, 30))
    for mode in ("dense_kl", "sparse_kl"):
        model.zero_grad()
        logits, kl = model(tokens, mode=mode, return_kl=True)
        assert torch.isfinite(kl) and kl.item() >= 0
        kl.backward()
        assert all(p.grad is None for p in model.main_parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.indexer_parameters())


def test_selected_scores_agree_between_score_product_and_key_gather(monkeypatch):
    import sparselens.models.indexer as indexer  # selected_dots: the one product-or-gather switch

    model = make("dsa", topk=6).train()
    tokens = torch.randint(0, 256, (2, 29))
    names = [f"blocks.{i}.attn.hook_attn_scores" for i in range(2)]
    _, kl_product = model(tokens, mode="sparse_kl", return_kl=True)
    scores_product = capture(model, tokens, names)
    monkeypatch.setattr(indexer, "SCORE_GATHER_MAX", 0)
    _, kl_gather = model(tokens, mode="sparse_kl", return_kl=True)
    scores_gather = capture(model, tokens, names)
    torch.testing.assert_close(kl_product, kl_gather, rtol=1e-5, atol=1e-6)
    assert kl_product.item() > 0
    for name in names:  # attention's selected scores (per-head keys) take the same switch
        torch.testing.assert_close(scores_product[name], scores_gather[name], rtol=1e-5, atol=1e-6)


def tied_model(backend: str | None = None):
    """A DSA model whose indexers have one live head of two: about a quarter of all scores are exactly 0 (every
    ReLU off), and queries whose live head weight is negative have their whole top-k among those ties."""
    model = make("dsa", topk=8, backend=backend)
    with torch.no_grad():
        for block in model.blocks:
            block.indexer.wq.weight[SMALL["indexer_dim"] :].zero_()  # head 1's query: q . k = 0 for every key
    return model


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "fast"])
def test_selection_does_not_depend_on_which_hooks_listen(backend):
    model = tied_model(backend)
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    topk = [f"blocks.{i}.indexer.hook_topk" for i in range(2)]
    scores = [f"blocks.{i}.indexer.{h}" for i in range(2) for h in ("hook_scores", "hook_head_scores")]
    with torch.no_grad():
        plain = model(tokens)
    alone_logits, alone = run_hooked(model, tokens, topk)
    with_scores_logits, with_scores = run_hooked(model, tokens, topk + scores)
    assert (with_scores["blocks.0.indexer.hook_scores"] == 0).float().mean() > 0.15  # the input really has ties
    for name in topk:
        assert torch.equal(alone[name], with_scores[name]), name
    assert torch.equal(plain, alone_logits) and torch.equal(plain, with_scores_logits)


def kl_terms(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(logits)) per query, written out: sum over p > 0 of p (log p - log q)."""
    logq = torch.log_softmax(logits, dim=-1)
    return torch.where(p > 0, p * (p.log() - logq), torch.zeros_like(p)).sum(-1)


@pytest.mark.parametrize("mode", ["dense_kl", "sparse_kl"])
def test_indexer_kl_is_the_specified_target(mode):
    # dense_kl: p = dense attention summed over heads, L1-normalised; q = softmax of I over the allowed keys.
    # sparse_kl: both restricted to the selected set S (hook_topk): p from the attention actually used (each head's
    # softmax over S, i.e. its dense pattern on S renormalised), summed over heads and L1-normalised; q = softmax(I_S).
    model = make("dsa", topk=6, backend=None)
    with torch.no_grad():  # sharper attention and indexer than at init, so p and q are far from uniform
        for name, w in model.named_parameters():
            if name.endswith(("qkv.weight", "indexer.wq.weight", "indexer.wk.weight", "indexer.ww.weight")):
                w.mul_(10)
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(1))
    hooks = ("attn.hook_dense_pattern", "indexer.hook_scores", "indexer.hook_topk")
    names = [f"blocks.{i}.{h}" for i in range(2) for h in hooks]
    (_, kl), c = run_hooked(model, tokens, names, mode=mode, return_kl=True)
    per_layer = []
    for i in range(2):
        dense, scores = c[f"blocks.{i}.attn.hook_dense_pattern"], c[f"blocks.{i}.indexer.hook_scores"]
        if mode == "dense_kl":
            p, logits = dense.sum(1), scores  # [B, T, T] each
        else:
            idx = c[f"blocks.{i}.indexer.hook_topk"]  # [B, T, k]
            valid, safe = idx >= 0, idx.clamp(min=0)
            b, h, t, k = *dense.shape[:3], idx.shape[-1]
            on_s = torch.gather(dense, -1, safe.unsqueeze(1).expand(b, h, t, k)) * valid.unsqueeze(1)  # [B, H, T, k]
            p = (on_s / on_s.sum(-1, keepdim=True)).sum(1)  # [B, T, k]
            logits = torch.gather(scores, -1, safe).masked_fill(~valid, float("-inf"))  # [B, T, k]
        per_layer.append(kl_terms(p / p.sum(-1, keepdim=True), logits).mean())
    want = torch.stack(per_layer).mean()
    assert want > 0.01, want
    torch.testing.assert_close(kl, want, rtol=1e-4, atol=1e-6)
