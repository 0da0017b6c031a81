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
    import sparselens.models.attention as attention
    import sparselens.models.indexer as indexer

    model = make("dsa", topk=6).train()
    tokens = torch.randint(0, 256, (2, 29))
    _, kl_product = model(tokens, mode="sparse_kl", return_kl=True)
    monkeypatch.setattr(attention, "SCORE_GATHER_MAX", 0)
    monkeypatch.setattr(indexer, "SCORE_GATHER_MAX", 0)
    _, kl_gather = model(tokens, mode="sparse_kl", return_kl=True)
    torch.testing.assert_close(kl_product, kl_gather, rtol=1e-5, atol=1e-6)
    assert kl_product.item() > 0
