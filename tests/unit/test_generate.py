"""Generation through the decode cache: greedy equals greedy by full forwards; sampling is seeded and respects
top-p; bad requests are refused with a message that says what to change."""

import pytest
import torch

from sparselens.benchmark.generate import GenerationError, generate, greedy_by_full_forwards, sample_next
from sparselens.config import AttentionPlan, LayerPlan
from sparselens.models import ModelConfig, build_model

PROMPT = list(b"def main():\n    return ")


@pytest.mark.parametrize("name", ["dense", "dsa"])
def test_greedy_through_the_cache_equals_greedy_by_full_forwards(tiny_run, name):
    model = tiny_run.load_model(name)
    got = list(generate(model, PROMPT, 40, temperature=0))
    assert got == greedy_by_full_forwards(model, PROMPT, 40)


def test_greedy_matches_for_a_plan_model_prompt_shorter_than_k():
    plan = AttentionPlan((LayerPlan.static(2, 4), LayerPlan.indexer_layer(2, 8, 6), LayerPlan.shared(1)))
    torch.manual_seed(0)
    model = build_model(ModelConfig(attention="plan", plan=plan, n_layers=3, d_model=32, n_heads=4, n_kv_heads=1,
                                    max_seq_len=64, topk=6)).eval()  # fmt: skip
    prompt = [65, 66, 67]  # shorter than k: every key is selected at first
    assert list(generate(model, prompt, 30, temperature=0)) == greedy_by_full_forwards(model, prompt, 30)


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(tiny_run):
    model = tiny_run.load_model("dsa")
    a = list(generate(model, PROMPT, 30, temperature=1.0, seed=3))
    assert a == list(generate(model, PROMPT, 30, temperature=1.0, seed=3))
    assert a != list(generate(model, PROMPT, 30, temperature=1.0, seed=4))
    assert list(generate(model, PROMPT, 30, temperature=1.0, top_p=1e-6, seed=5)) == list(
        generate(model, PROMPT, 30, temperature=0)
    )


def test_top_p_keeps_the_token_that_crosses_it():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(sample_next(logits, 1.0, 0.7, torch.Generator().manual_seed(s))) for s in range(200)}
    assert seen == {0, 1}  # 0.5 < 0.7, so token 1 (reaching 0.8) stays; 2 and 3 never appear


@pytest.mark.parametrize(
    "prompt, n, kwargs, match",
    [
        ([], 5, {}, "prompt is empty"),
        (PROMPT, 300, {}, "exceed the model's max_seq_len=256"),
        (PROMPT, 5, {"temperature": -1.0}, "temperature"),
        (PROMPT, 5, {"top_p": 0.0}, "top_p"),
    ],
    ids=["empty", "too_long", "temperature", "top_p"],
)
def test_bad_requests_are_refused(tiny_run, prompt, n, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        list(generate(tiny_run.load_model("dense"), prompt, n, **kwargs))
