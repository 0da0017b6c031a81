"""topk_indices and indexer_topk: selection validity, and every backend against the reference."""

import pytest
import torch

from sparselens.kernels import _native, indexer_topk, topk_indices
from sparselens.kernels.indexer_scores.cpu import indexer_scores as indexer_scores_cpu
from sparselens.kernels.indexer_scores.reference import indexer_scores as ref_scores
from sparselens.kernels.testing import check_selection, same_selection
from sparselens.kernels.topk import cpu as topk_cpu
from sparselens.kernels.topk import reference
from sparselens.kernels.workloads import random_indexer_inputs, trained_like_indexer_inputs

# (B, T, S, HI, DI, k): k above the allowed keys for early queries, k > S, T > S (queries that see nothing)
CASES = {
    "t63_k7": (1, 63, 63, 4, 32, 7),
    "t37_s53_k16": (2, 37, 53, 3, 20, 16),
    "t111_s200_k64": (1, 111, 200, 5, 16, 64),
    "k_above_s": (2, 30, 21, 4, 8, 40),
    "t_above_s": (1, 25, 11, 4, 8, 5),
    "t300_k33": (1, 300, 300, 4, 32, 33),
}


def test_reference_example():
    scores = torch.tensor([[[1.0, 3.0, 2.0, float("-inf")], [0.5, float("-inf"), float("-inf"), float("-inf")]]])
    assert reference.topk_indices(scores, 2).tolist() == [[[1, 2], [0, -1]]]
    assert reference.topk_indices(scores, 6).tolist() == [[[0, 1, 2, -1, -1, -1], [0, -1, -1, -1, -1, -1]]]


@pytest.mark.parametrize("k", [1, 5, 64, 300], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_topk_indices_valid_and_matches_reference(backend, k):
    B, T, S = 2, 41, 77
    scores = torch.randn(B, T, S)
    scores[torch.rand(B, T, S) < 0.3] = float("-inf")  # arbitrary disallowed keys, whole rows included
    scores[0, 5] = float("-inf")
    scores[1, 7, :10] = float("nan")  # never selected
    scores[1, 8, 3] = float("inf")  # not finite: never selected
    scores[0, 9, 20:40] = 0.5  # ties
    out = topk_indices(scores, k, backend=backend)
    allowed = torch.where(torch.isfinite(scores), scores, float("-inf"))
    assert check_selection(out, allowed, k) is None
    assert same_selection(out, reference.topk_indices(scores, k), allowed)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("inputs", ["random", "trained_like"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_indexer_topk_cpu_matches_reference(case, inputs, causal):
    """The public CPU op and each of its paths (blocked panels, keys split for few queries, the torch fallback)."""
    B, T, S, HI, DI, k = case
    make = random_indexer_inputs if inputs == "random" else trained_like_indexer_inputs
    x = make(B, T, S, HI, DI, seed=1)
    scores = ref_scores(x["q"], x["k"], x["w"], causal=causal)
    want = reference.indexer_topk(x["q"], x["k"], x["w"], k, causal=causal)
    paths = [topk_cpu._indexer_topk_chunked]
    if _native.library() is not None:  # the compiled paths, each forced
        paths += [topk_cpu._indexer_topk_native, topk_cpu._indexer_topk_split]
    for got in [indexer_topk(x["q"], x["k"], x["w"], k, causal=causal, backend="cpu")] + [
        path(x["q"], x["k"], x["w"], k, causal) for path in paths
    ]:
        assert check_selection(got, scores, k) is None
        assert same_selection(got, want, scores)


# decoding: one or a few queries at the end of a long, odd-length key sequence (query t sits at key S - T + t)
DECODE = {"t1_s32767_k32": (1, 1, 32767, 4, 64, 32), "t3_s16383_b2": (2, 3, 16383, 4, 64, 32),
          "t16_s5001_k300": (1, 16, 5001, 3, 20, 300), "t1_s40_k64": (1, 1, 40, 4, 16, 64)}  # fmt: skip


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("name", list(DECODE))
def test_indexer_topk_cpu_decode_shapes(name, causal, monkeypatch, compiled):
    B, T, S, HI, DI, k = DECODE[name]
    x = random_indexer_inputs(B, T, S, HI, DI, seed=4)
    scores = ref_scores(x["q"], x["k"], x["w"], causal=causal)
    want = reference.indexer_topk(x["q"], x["k"], x["w"], k, causal=causal)
    split = []
    monkeypatch.setattr(topk_cpu, "_indexer_topk_split", lambda *a: split.append(1) or _split(*a))
    got = indexer_topk(x["q"], x["k"], x["w"], k, causal=causal, backend="cpu")
    assert split, "few queries should take the split path"
    assert check_selection(got, scores, k) is None
    assert same_selection(got, want, scores)


_split = topk_cpu._indexer_topk_split


def test_indexer_topk_triton_decode_shape(triton_device):
    B, T, S, HI, DI, k = 1, 2, 3001, 4, 16, 32
    x = {n: t.to(triton_device) for n, t in random_indexer_inputs(B, T, S, HI, DI, seed=5).items()}
    scores = ref_scores(x["q"], x["k"], x["w"])
    got = indexer_topk(x["q"], x["k"], x["w"], k, backend="triton")
    assert check_selection(got, scores, k) is None
    assert same_selection(got, reference.indexer_topk(x["q"], x["k"], x["w"], k), scores)


@pytest.mark.parametrize("case", ["t37_s53_k16", "t_above_s"])
def test_indexer_topk_triton_matches_reference(case, triton_device):
    B, T, S, HI, DI, k = CASES[case]
    x = {n: t.to(triton_device) for n, t in random_indexer_inputs(B, T, S, HI, DI, seed=2).items()}
    scores = ref_scores(x["q"], x["k"], x["w"])
    got = indexer_topk(x["q"], x["k"], x["w"], k, backend="triton")
    assert check_selection(got, scores, k) is None
    assert same_selection(got, reference.indexer_topk(x["q"], x["k"], x["w"], k), scores)


def test_no_future_or_repeated_key_at_scale():
    x = random_indexer_inputs(1, 700, 900, 4, 32, seed=3)
    out = indexer_topk(x["q"], x["k"], x["w"], 128, backend="cpu")  # many compactions of the running top-k
    assert check_selection(out, ref_scores(x["q"], x["k"], x["w"]), 128) is None


@pytest.mark.parametrize("k", [0, -3, 2.5], ids=["zero", "negative", "float"])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="positive int"):
        topk_indices(torch.randn(1, 3, 4), k)
    with pytest.raises(ValueError, match="positive int"):
        indexer_topk(torch.randn(1, 3, 2, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 2), k)


@pytest.mark.parametrize("k", [1, 3, 40], ids=lambda k: f"k{k}")
def test_heavy_ties_keep_exact_top_k(k):
    scores = (torch.randn(2, 30, 500) * 2).round() / 2  # few distinct values: histogram compaction falls back
    scores[:, :, 400:] = float("-inf")
    out = topk_indices(scores, k, backend="cpu")
    assert check_selection(out, scores, k) is None
    assert same_selection(out, reference.topk_indices(scores, k), scores)


def test_indexer_topk_cpu_exact_when_the_sample_misleads():
    """The compiled top-k starts each query at a threshold guessed from every 8th 16-key panel. Keys that score
    high only in those panels make the guess too high for the rest; the result must still be the exact top-k."""
    B, T, S, HI, DI, k = 1, 400, 1024, 4, 8, 64
    g = torch.Generator().manual_seed(5)
    q = torch.zeros(B, T, HI, DI)
    q[..., 0] = 1.0
    w = torch.ones(B, T, HI) / HI
    keys = torch.rand(B, S, DI, generator=g)
    sampled = (torch.arange(S) // 16) % 8 == 0
    keys[0, sampled, 0] = 5.0 + torch.rand(int(sampled.sum()), generator=g)  # the sample outscores the rest
    scores = ref_scores(q, keys, w)
    got = indexer_topk(q, keys, w, k, backend="cpu")
    assert check_selection(got, scores, k) is None
    assert same_selection(got, reference.indexer_topk(q, keys, w, k), scores)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_indexer_topk_cpu_never_selects_an_infinite_score(causal):
    """A score that overflows to +inf is not allowed (as in the reference); the compiled top-k once crashed on it."""
    B, T, S, HI, DI, k = 1, 300, 1000, 4, 8, 16
    x = random_indexer_inputs(B, T, S, HI, DI, seed=6)
    x["q"][..., 0], x["w"][:] = 1e20, 1.0
    x["k"][0, 777, 0] = 1e20  # q . k = 1e40 -> +inf for every query that sees key 777
    scores = ref_scores(x["q"], x["k"], x["w"], causal=causal)
    assert torch.isinf(scores).any()
    got = indexer_topk(x["q"], x["k"], x["w"], k, causal=causal, backend="cpu")
    assert not (got == 777).any()
    assert same_selection(got, reference.indexer_topk(x["q"], x["k"], x["w"], k, causal=causal), scores)


@pytest.mark.parametrize("inputs", ["random", "ties"])
def test_cpu_decoding_selects_what_prefill_selects(inputs, monkeypatch, compiled):
    """Query t of a prefill (blocked kernel) and the same query decoded alone over its S - T + t + 1 keys (split
    kernel, several chunks) select the same keys, bit for bit: one scoring tile, one ranking by (score, position)
    with later keys winning ties. "ties": most scores are exactly 0 (every ReLU off), so the cut falls among them."""
    B, T, S, HI, DI, k = 1, 40, 2001, 4, 24, 64
    x = random_indexer_inputs(B, T, S, HI, DI, seed=11)
    if inputs == "ties":
        x["q"][..., 1:], x["k"][..., 1:] = 0.0, 0.0
        x["q"][..., 0], x["w"] = 1.0, x["w"].abs()
        x["k"][..., 0] = torch.where(torch.rand(B, S) < 0.01, 1.0, -1.0) * torch.rand(B, S)  # ~1% score above 0
    monkeypatch.setattr(topk_cpu, "SPLIT_MIN_KEYS", 100)
    prefill = indexer_topk(x["q"], x["k"], x["w"], k, backend="cpu")
    with torch.no_grad():
        rows = topk_indices(indexer_scores_cpu(x["q"], x["k"], x["w"]), k, backend="cpu")
    assert torch.equal(rows, prefill)  # the row top-k over the same scores ranks them the same way
    scores = ref_scores(x["q"], x["k"], x["w"])
    for t in (0, 7, 23, T - 1):
        s1 = S - T + t + 1
        one = indexer_topk(x["q"][:, t : t + 1], x["k"][:, :s1], x["w"][:, t : t + 1], k, backend="cpu")
        assert torch.equal(one[0, 0], prefill[0, t]), t
        if inputs == "ties":  # the zero-score keys taken are the latest ones
            zeros = prefill[0, t][scores[0, t, prefill[0, t]] == 0]
            all_zeros = (scores[0, t, :s1] == 0).nonzero().squeeze(1)  # ascending positions
            assert 0 < len(zeros) < len(all_zeros) and torch.equal(zeros, all_zeros[-len(zeros) :])
