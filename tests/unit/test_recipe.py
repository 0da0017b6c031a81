"""The training recipe as specified: per-stage learning rates, equal-step batches, per-objective clipping, threads."""

import dataclasses
import hashlib
import math

import pytest
import torch

from sparselens.config import get_preset
from sparselens.storage import RunStore
from sparselens.training import loop, recipe, train_all, train_log, train_stage
from sparselens.training.stages import StageSpec, stage_specs


def with_train(preset, **changes):
    """A copy of `preset` with training fields replaced."""
    return dataclasses.replace(preset, train=dataclasses.replace(preset.train, **changes))


# 4 pre-training + 12 warm-up + 12 sparse steps, a 10-step ramp; distinct peaks so main and indexer lrs differ
PRESET = with_train(
    get_preset("tiny"),
    seq_len=32,
    batch_size=2,
    dense_steps=4,
    warmup_steps=12,
    sparse_steps=12,
    lr_warmup_steps=2,
    resume_warmup_steps=10,
    lr=1e-2,
    indexer_lr=3e-3,
    log_every=1,
    checkpoint_every=100,
)
TC = PRESET.train
D, W, S = TC.dense_steps, TC.warmup_steps, TC.sparse_steps


def new_store(root, preset=PRESET) -> RunStore:
    store = RunStore(str(root), "r")
    store.create(preset.to_dict())
    return store


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The specified schedule, written out: linear (step + 1) / warmup, then cosine from 1 down to min_lr_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return TC.min_lr_ratio + (1 - TC.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def one_ramp(local: int) -> float:
    return min(1.0, (local + 1) / TC.resume_warmup_steps)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """train_all on PRESET, recording (stage, global step, batch digest) of every step; returns (store, records)."""
    records, last = [], {}
    real_batch, real_losses = loop.train_batch, loop.step_losses

    def batch(*args, step, **kwargs):
        out = real_batch(*args, step=step, **kwargs)
        last["step"] = step
        return out

    def losses(model, spec, tokens):
        records.append((spec.stage, last["step"], hashlib.sha1(tokens.numpy().tobytes()).hexdigest()))
        return real_losses(model, spec, tokens)

    store = new_store(tmp_path_factory.mktemp("recipe-run"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_batch", batch)
        mp.setattr(loop, "step_losses", losses)
        train_all(store, PRESET)
    return store, records


def test_the_dsa_stages_see_the_dense_baselines_batch_at_every_global_step(recorded_run):
    _, records = recorded_run
    by_stage = {}
    for stage, g, digest in records:
        by_stage.setdefault(stage, {})[g] = digest
    assert sorted(by_stage["pretrain"]) == list(range(D))
    assert sorted(by_stage["dense_continue"]) == list(range(D, D + W + S))
    assert sorted(by_stage["warmup"]) == list(range(D, D + W))
    assert sorted(by_stage["sparse"]) == list(range(D + W, D + W + S))
    dsa = by_stage["warmup"] | by_stage["sparse"]
    assert all(by_stage["dense_continue"][g] == dsa[g] for g in dsa)
    assert len(set(dsa.values())) == W + S  # the test can fail: every step has its own batch


def test_each_stage_ramps_its_learning_rate_once(recorded_run):
    store, _ = recorded_run
    log = train_log(store, PRESET)
    lr = {(r.stage, r.step): r.lr for r in log.itertuples()}
    total = TC.total_steps
    # the indexer-only warm-up: 0.1, 0.2, 0.3 of its peak, then its own cosine over W (not 0.01, 0.04, 0.09)
    assert [lr["warmup", D + i] / TC.indexer_lr for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    for g in range(D):
        assert lr["pretrain", g] == pytest.approx(TC.lr * warmup_cosine(g, total, TC.lr_warmup_steps)), g
    for local in range(W + S):
        want = TC.lr * warmup_cosine(D + local, total, TC.lr_warmup_steps) * one_ramp(local)
        assert lr["dense_continue", D + local] == pytest.approx(want), local
    for local in range(W):
        want = TC.indexer_lr * warmup_cosine(local, W, TC.resume_warmup_steps)
        assert lr["warmup", D + local] == pytest.approx(want), local
    for local in range(S):  # logged lr: the main model's
        want = TC.lr * warmup_cosine(D + W + local, total, TC.lr_warmup_steps) * one_ramp(local)
        assert lr["sparse", D + W + local] == pytest.approx(want), local


@pytest.mark.parametrize("local", [0, 4, 11])
def test_sparse_stage_indexer_shares_the_main_factor_on_its_own_peak(local):
    torch.manual_seed(0)
    model = recipe.fresh_model(PRESET, "dsa")
    spec = stage_specs(TC)["sparse"]
    opt = loop._optimizer(model, spec, PRESET)
    loop._set_lr(opt, spec, PRESET, local)
    indexer = {id(p) for p in model.indexer_parameters()}
    factor = warmup_cosine(D + W + local, TC.total_steps, TC.lr_warmup_steps) * one_ramp(local)
    for group in opt.param_groups:
        is_indexer = id(group["params"][0]) in indexer
        assert group["lr"] == pytest.approx((TC.indexer_lr if is_indexer else TC.lr) * factor)
    assert any(id(g["params"][0]) in indexer for g in opt.param_groups)


def _one_sparse_step(root, monkeypatch, lm_scale: float, kl_scale: float) -> dict[str, torch.Tensor]:
    """Parameters of a fresh DSA model after one sparse-stage step on lm_scale * LM + kl_scale * KL."""
    real = loop.step_losses

    def scaled(model, spec, batch):
        out = real(model, spec, batch)
        return out | {"loss": lm_scale * out["lm_loss"] + kl_scale * out["kl_loss"]}

    monkeypatch.setattr(loop, "step_losses", scaled)
    model = recipe.fresh_model(PRESET, "dsa")
    spec = StageSpec("dsa", "sparse", D + W, 1, "sparse_kl", True, True, True)
    loop.run_stage(new_store(root), spec, model, PRESET, "r")
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_huge_kl_gradient_does_not_shrink_the_main_update_nor_a_huge_lm_gradient_the_indexers(tmp_path, monkeypatch):
    base = _one_sparse_step(tmp_path / "base", monkeypatch, 1.0, 1.0)
    big_kl = _one_sparse_step(tmp_path / "kl", monkeypatch, 1.0, 1e8)
    big_lm = _one_sparse_step(tmp_path / "lm", monkeypatch, 1e8, 1.0)
    fresh = recipe.fresh_model(PRESET, "dsa").state_dict()
    main = [n for n in base if ".indexer." not in n]
    indexer = [n for n in base if ".indexer." in n]
    assert all(torch.equal(base[n], big_kl[n]) for n in main)  # clipped on its own LM gradient norm
    assert all(torch.equal(base[n], big_lm[n]) for n in indexer)  # clipped on its own KL gradient norm
    assert not all(torch.equal(base[n], fresh[n]) for n in main)  # the test can fail: the step moved both
    assert not all(torch.equal(base[n], fresh[n]) for n in indexer)


def test_clip_gradients_bounds_each_role_by_its_own_limit():
    preset = with_train(PRESET, grad_clip=0.5, indexer_grad_clip=0.25)
    model = recipe.fresh_model(preset, "dsa")
    spec = stage_specs(preset.train)["sparse"]
    opt = loop._optimizer(model, spec, preset)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    norms = loop.clip_gradients(opt, preset)
    assert set(norms) == {"main", "indexer"} and all(n > 1 for n in norms.values())
    for params, limit in ((model.main_parameters(), 0.5), (model.indexer_parameters(), 0.25)):
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        assert after.item() == pytest.approx(limit, rel=1e-4)


def test_a_stage_restores_the_callers_thread_count(tmp_path):
    before = torch.get_num_threads()
    preset = with_train(PRESET, threads=1, dense_steps=1)
    try:
        torch.set_num_threads(2)
        train_stage(new_store(tmp_path, preset), preset, "pretrain")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_torch_threads_restores_on_errors_and_leaves_none_alone():
    from sparselens.threads import torch_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        with torch_threads(None):
            assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="positive"):
            with torch_threads(0):
                pass
    finally:
        torch.set_num_threads(before)
