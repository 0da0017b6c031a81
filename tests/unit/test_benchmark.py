"""Phase 4 library: the needle grid, the stitched decode cache, paired quality rows, and the benchmark table of a
tiny run (every metric present, intervals ordered, decode equal to the full forward, costs from the cost model)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sparselens.analysis.cost import cache_bytes_per_token
from sparselens.benchmark.quality import quality_rows
from sparselens.benchmark.retrieval import PAIR_BYTES, needle_sample
from sparselens.benchmark.run import read_environment, run_benchmark
from sparselens.benchmark.table import METRICS, TABLE
from sparselens.benchmark.timing import fill_cache, held_out_tokens
from sparselens.data.synthetic import TASKS
from sparselens.runs import run_preset


@pytest.mark.parametrize("length", [18, 64, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_needle_sample_layout(length, depth):
    s = needle_sample(length, depth, 7)
    text = bytes(s.tokens.astype(np.uint8).tolist())
    assert len(s.tokens) == length + 1 and text[-9:-7] == b"|q"
    key = text[-7:-4]
    assert text[s.needle_pos - 6 : s.needle_pos] == b"k" + key + b":v"  # the needle defines the asked key
    assert text[s.needle_pos : s.needle_pos + 2] == text[-2:]  # the answer is the needle's value
    assert list(s.answer_pos) == [length - 2, length - 1]
    defs = text[:-9].split(b";")[1:-1]  # whole definitions only
    assert len({d[1:4] for d in defs}) == len(defs)  # keys are unique: one right answer
    assert np.array_equal(s.tokens, needle_sample(length, depth, 7).tokens)  # deterministic


def test_needle_depth_moves_the_needle():
    positions = [needle_sample(1000, d, 0).needle_pos for d in (0.0, 0.5, 1.0)]
    assert positions[0] < PAIR_BYTES + 8 and abs(positions[1] - 500) < PAIR_BYTES and positions[2] > 1000 - 20
    with pytest.raises(ValueError, match="at least 18"):
        needle_sample(10, 0.5, 0)


def test_stitched_cache_holds_real_prefills(tiny_run):
    model = tiny_run.load_model("dsa")
    windows = held_out_tokens(32, 3)
    cache = model.new_cache(1)
    with torch.no_grad():
        fill_cache(model, cache, 80, windows, chunk=32)
        whole = model.new_cache(1)
        model(windows[1], cache=whole)  # the second stretch is an independent prefill of window 1
    assert cache.length == 80
    for layer, ref in zip(cache.layers, whole.layers, strict=True):
        torch.testing.assert_close(layer.k.buf[:, 32:64], ref.k.buf[:, :32])
        torch.testing.assert_close(layer.index_k.buf[:, 32:64], ref.index_k.buf[:, :32])
    with torch.no_grad():
        assert model(windows[0][:, :1], cache=cache).shape == (1, 1, 256)  # decoding continues at position 80


def test_paired_quality_rows_against_themselves_are_exact():
    losses = {m: {("code", 64): np.array([1.0, 2.0, 3.0]) * s} for m, s in (("dense", 1.0), ("dsa", 1.1))}
    df = pd.DataFrame(quality_rows(losses, {"dense": "dense", "dsa": "dsa"}, 200))
    own = df[(df.model == "dsa") & (df.metric == "loss_ratio_vs_dsa")].iloc[0]
    assert own.value == own.low == own.high == 1.0
    other = df[(df.model == "dsa") & (df.metric == "loss_ratio_vs_dense")].iloc[0]
    assert other.value == pytest.approx(1.1) and other.low == pytest.approx(1.1)  # a constant ratio: no spread


@pytest.fixture(scope="module")
def benchmarked(tiny_run, tmp_path_factory):
    from tests.unit.conftest import copy_run

    store = copy_run(tiny_run, tmp_path_factory.mktemp("bench"))
    return store, run_benchmark(store, run_preset(store).with_section("benchmark", rss=True))


def test_benchmark_table_of_a_tiny_run(benchmarked):
    store, df = benchmarked
    written = store.read_table(TABLE)
    assert len(written) == len(df) and set(written.metric) == set(METRICS)
    tasks = written[written.metric == "task_accuracy"]  # every model, every synthetic task, at the training length
    assert set(tasks.content_type) == set(TASKS) and len(tasks) == len(TASKS) * written.model.nunique()
    assert (tasks.interval == "wilson95").all() and (tasks.n > 0).all()
    keys = ["model", "metric", "seq_len", "content_type", "depth"]
    assert not written.duplicated(keys).any()
    ranged = written.dropna(subset=["low", "high"])
    assert (ranged.low <= ranged.value + 1e-12).all() and (ranged.value <= ranged.high + 1e-12).all()
    assert (written[written.metric == "decode_error_ratio"].value <= 1e-5).all()
    preset = run_preset(store)
    assert set(written[written.metric == "prefill_ms"].seq_len) == set(preset.benchmark.prefill_lens)
    assert set(written[written.metric == "decode_ms_per_token"].seq_len) == set(preset.benchmark.decode_contexts)
    cache = written[written.metric == "cache_bytes_per_token"].set_index("model").value
    assert cache["dsa"] == cache_bytes_per_token(store.load_model("dsa").cfg)["total"] > cache["dense"]
    rss = written[written.metric == "peak_rss_mb"].set_index("model").value
    base = written[written.metric == "rss_baseline_mb"].set_index("model").value
    assert ((rss >= base) & (base > 50)).all()
    env = read_environment(store)
    assert env["torch_version"] == torch.__version__ and env["threads"] >= 1 and set(env["seconds"]) >= {"quality"}
    assert json.loads(store.read_text("benchmark/environment.json")) == env


def test_retrieval_grid_covers_lengths_and_depths(benchmarked):
    store, df = benchmarked
    cfg = run_preset(store).benchmark
    grid = df[df.metric == "retrieval_accuracy"]
    assert len(grid) == 2 * len(cfg.retrieval_depths) * len(cfg.retrieval_multipliers)
    assert (grid.n == cfg.retrieval_samples).all() and grid.value.between(0, 1).all()
    nats = df[df.metric == "retrieval_answer_loss"]
    assert len(nats) == len(grid) and (nats.value > 0).all() and (nats.low <= nats.high).all()


def test_retrieval_answers_of_a_model_that_knows_them():
    from sparselens.benchmark.retrieval import answers, grid

    class Oracle(torch.nn.Module):  # puts all mass on the true next token (cheats: sees the answer in the batch)
        def __init__(self, cells):
            super().__init__()
            self.full = torch.from_numpy(np.stack([c.tokens for c in cells]))  # [B, L + 1]

        def forward(self, tokens):
            return torch.nn.functional.one_hot(self.full[:, 1:], 256).float() * 50  # [B, L, V]

    cells = grid(64, (0.0, 1.0), 3)
    hits, nll = answers(Oracle(cells), cells)
    assert hits.all() and (nll < 1e-6).all()
    wrong = Oracle(cells)
    wrong.full = wrong.full.clone()
    wrong.full[:, -1] = (wrong.full[:, -1] - ord("0") + 1) % 10 + ord("0")  # second digit off by one
    hits, nll = answers(wrong, cells)
    assert not hits.any() and (nll > 10).all()


def test_candidates_come_from_the_phase3_table(tiny_run, run_copy):
    from sparselens.benchmark.models import model_roster
    from sparselens.config import AttentionPlan, ConfigError, LayerPlan
    from sparselens.models import build_model

    store = run_copy(tiny_run)
    cfg = store.load_model("dsa").cfg
    plans = {
        "static_s2_w6": ("static", AttentionPlan.uniform(2, LayerPlan.static(2, 6))),
        "reference": ("reference", AttentionPlan.uniform(2, LayerPlan.indexer_layer(2, 8, 8))),
    }
    for name, (_, plan) in plans.items():
        store.save_model(name, build_model(cfg.replace(attention="plan", plan=plan)))
    table = pd.DataFrame([{"candidate": n, "family": f, "plan": p.to_json()} for n, (f, p) in plans.items()])
    store.write_table("phase3_candidates", table)
    assert model_roster(store) == {"dense": "dense", "dsa": "dsa", "reference": "reference", "static_s2_w6": "static"}
    assert model_roster(store, ("dsa", "static_s2_w6")) == {"dsa": "dsa", "static_s2_w6": "static"}
    with pytest.raises(ConfigError, match="not saved"):
        model_roster(store, ("dsa", "nope"))
    preset = run_preset(store).with_section("benchmark", models=("dense", "dsa", "static_s2_w6"), decode_contexts=(64,))
    df = run_benchmark(store, preset)
    static = df[df.model == "static_s2_w6"]
    assert set(static.family) == {"static"} and (static[static.metric == "decode_error_ratio"].value <= 1e-5).all()
    cache = static[static.metric == "cache_index_key_bytes_per_token"].value
    assert (cache == 0).all()  # a static plan keeps no indexer keys
