"""Efficiency: the oracle bounds every method at every density; curves agree with patterns.py; sparsify-one-head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparselens.analysis import KINDS, oracle_coverage, plant_head
from sparselens.analysis.efficiency import (
    attention_flops,
    curve_metrics,
    density_grid,
    head_curves,
    indexer_flops,
    oracle_curve,
    ranked_curve,
    step_recall,
)
from sparselens.config import ModelConfig
from sparselens.models import build_model, capture
from sparselens.models.rope import apply_rope
from sparselens.phase2.sparsify import replaced_head, topk_mask


@pytest.fixture(scope="module")
def planted_with_scores():
    """Two planted maps of every kind (square and Q < K), each with noisy indexer-like scores."""
    rng = np.random.default_rng(11)
    out = []
    for kind in KINDS:
        for q, k in ((48, 48), (20, 72)):
            attn, _ = plant_head(kind, q, k, rng)
            scores = np.log(attn + 1e-9) + rng.normal(0, 1.5, attn.shape)  # a good but imperfect indexer
            out.append((kind, attn, scores))
    return out


def test_oracle_recall_is_at_least_every_methods_at_every_density(planted_with_scores):
    grid = density_grid(40, 72)
    for kind, attn, scores in planted_with_scores:
        curves = head_curves(attn, scores)
        assert set(curves) >= {"local", "block", "topk_per_query", "indexer", "oracle"}
        d_or, r_or = curves["oracle"]
        oracle_grid = step_recall(d_or, r_or, grid)
        for method, (d, r) in curves.items():
            assert (step_recall(d_or, r_or, d) >= r - 1e-9).all(), (kind, method)  # at the method's own points
            assert (oracle_grid >= step_recall(d, r, grid) - 1e-9).all(), (kind, method)  # and on the grid
            assert ((d >= 0) & (d <= 1 + 1e-9)).all() and ((r >= -1e-12) & (r <= 1 + 1e-9)).all()
        metrics = curve_metrics(curves)
        assert metrics["oracle"]["auc_vs_oracle"] == pytest.approx(1.0)
        assert all(m["regret_d8"] >= -1e-9 and m["auc_vs_oracle"] <= 1 + 1e-9 for m in metrics.values())


def test_oracle_and_per_query_curves_match_patterns(planted_with_scores):
    _, attn, _ = planted_with_scores[4]
    d, r = oracle_curve(attn)
    for i in (0, 10, 200, len(d) - 1):
        assert r[i] == pytest.approx(oracle_coverage(attn, at_density=d[i]), abs=1e-9)
    dq, rq = ranked_curve(attn, attn)
    for k in (1, 3, 17):
        assert rq[k - 1] == pytest.approx(oracle_coverage(attn, keys_per_query=k), abs=1e-9)
    assert rq[-1] == pytest.approx(1.0) and dq[-1] == pytest.approx(1.0)


def test_step_recall_takes_the_best_point_no_denser_than_asked():
    d, r = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.4, 0.9])
    np.testing.assert_allclose(step_recall(d, r, np.array([0.05, 0.1, 0.25, 1.0])), [0.0, 0.5, 0.5, 0.9])


def test_flops_are_linear_in_keys():
    cfg = ModelConfig(d_model=64, n_heads=4, indexer_heads=2, indexer_dim=8)
    assert attention_flops(10, 16) == 640
    assert indexer_flops(100, cfg) == 2 * 2 * 8 * 100 + 3 * 2 * 100 + 100 + 2 * 64 * (16 + 8 + 2)


def _model(attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        attention=attention,
        n_layers=2,
        d_model=32,
        n_heads=2,
        max_seq_len=64,
        indexer_heads=2,
        indexer_dim=8,
        topk=4,
        kernel_backend="reference",
    )
    return build_model(cfg).eval()


def test_replacing_a_head_with_its_own_attention_changes_nothing():
    tokens = torch.randint(0, 256, (2, 23))
    dense = _model("dense")
    with torch.no_grad():
        ref = dense(tokens)
        with replaced_head(dense, 1, 0, torch.ones(23, 23, dtype=torch.bool)):  # full causal mask = dense softmax
            same = dense(tokens)
    torch.testing.assert_close(same, ref, rtol=1e-4, atol=1e-5)
    dsa = _model("dsa")
    with torch.no_grad():
        ref = dsa(tokens)
        with replaced_head(dsa, 0, 1, lambda p: p > 0):  # exactly the indexer's selection
            same = dsa(tokens)
    torch.testing.assert_close(same, ref, rtol=1e-4, atol=1e-5)


def test_replaced_head_uses_only_the_mask_and_stays_causal():
    tokens = torch.randint(0, 256, (1, 19))
    model = _model("dense")
    window = torch.ones(19, 19, dtype=torch.bool).tril() & ~torch.ones(19, 19, dtype=torch.bool).tril(-2)  # w = 2
    name = "blocks.1.attn.hook_pattern"
    with torch.no_grad():
        ref = model(tokens)
        with replaced_head(model, 1, 1, window):
            out = model(tokens)
            pattern = capture(model, tokens, [name])[name]  # the hook still shows what the head computed before
            changed = tokens.clone()
            changed[0, 12:] = (changed[0, 12:] + 1) % 256
            out_changed = model(changed)
    assert not torch.allclose(out, ref)
    torch.testing.assert_close(out_changed[:, :12], out[:, :12])  # no future token leaks in
    assert pattern.shape == (1, 2, 19, 19)
    with pytest.raises(ValueError, match="head 5"):
        with replaced_head(model, 0, 5, window):
            pass


def test_replaced_head_matches_a_layer_recomputed_with_that_head_masked():
    """Independent of replaced_head's correction term: recompute the whole layer by hand with every head's
    softmax, the chosen head's restricted to the mask, and compare the model outputs."""
    tokens = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(3))
    model = _model("dense")
    layer, head = 1, 1
    window = torch.ones(23, 23, dtype=torch.bool).tril() & ~torch.ones(23, 23, dtype=torch.bool).tril(-3)
    attn = model.blocks[layer].attn

    def by_hand(h, state, indexer=None):
        b, t, d = h.shape
        q, k, v = attn.qkv(h).view(b, t, 3, model.cfg.n_heads, model.cfg.head_dim).unbind(2)
        cos, sin = state.rope(model.cfg.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        allowed = torch.ones(b, model.cfg.n_heads, t, t, dtype=torch.bool).tril()
        allowed[:, head] = window
        scores = torch.einsum("bthd,bshd->bhts", q, k) * attn.scale
        p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        return attn.proj(torch.einsum("bhts,bshd->bthd", p, v).reshape(b, t, d)), None

    with torch.no_grad():
        with replaced_head(model, layer, head, window):
            got = model(tokens)
        original = attn.forward
        attn.forward = by_hand
        try:
            want = model(tokens)
        finally:
            attn.forward = original
        assert not torch.allclose(got, model(tokens), atol=1e-4)  # the head really changed
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_topk_mask_keeps_each_querys_heaviest_visible_keys():
    p = torch.tensor([[[1.0, 0, 0], [0.3, 0.7, 0], [0.5, 0.2, 0.3]]])  # [1, 3, 3]
    m = topk_mask(2)(p)
    assert m.tolist() == [[[True, False, False], [True, True, False], [True, False, True]]]
