"""Capture: rows equal a direct computation from the hooks, tables read back typed, reruns skip finished work."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from sparselens.capture import TABLES, capture_run, layer_hooks
from sparselens.capture.read import arrow_dataset, dask_frame
from sparselens.capture.stats import _sorted_quantiles, keys_for_mass, local_mass
from sparselens.config import get_preset
from sparselens.data.dataset import validation_samples
from sparselens.models import capture
from sparselens.storage import SCHEMAS

CFG = get_preset("tiny").capture
T = 64  # a captured length of the tiny preset
LAYER = 1


def _hooks(store, model_name: str, sample_id: str):
    content_type, _, i = sample_id.rsplit("-", 2)
    sample = validation_samples(content_type, T, CFG.n_samples)[int(i)]
    model = store.load_model(model_name)
    tokens = torch.from_numpy(sample.tokens[:-1]).unsqueeze(0)  # [1, T]
    return sample, capture(model, tokens, layer_hooks(LAYER, model_name == "dsa"))


def _rows(store, table: str, model: str, sample_id: str, order: list[str]) -> pd.DataFrame:
    filters = [("model", "=", model), ("seq_len", "=", T), ("layer", "=", LAYER), ("sample_id", "=", sample_id)]
    return store.read_table(table, filters=filters).sort_values(order).reset_index(drop=True)


def _k(rows: np.ndarray, q: float) -> np.ndarray:
    srt = -np.sort(-rows, axis=-1)
    cum = np.cumsum(srt, axis=-1)
    return np.array([np.searchsorted(c, q * c[-1]) + 1 for c in cum.reshape(-1, cum.shape[-1])]).reshape(
        rows.shape[:-1]
    )


@pytest.mark.parametrize("model", ["dense", "dsa"])
def test_query_stats_equal_direct_computation_from_hooks(tiny_captured, model):
    sid = "assoc_recall-64-1"
    sample, cache = _hooks(tiny_captured, model, sid)
    rows = _rows(tiny_captured, "query_stats", model, sid, ["head", "query_pos"])
    p = cache[f"blocks.{LAYER}.attn.hook_pattern"][0].double().numpy()  # [H, T, T]
    entropy = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(-1)  # [H, T]
    np.testing.assert_allclose(rows["entropy"], entropy.reshape(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows["sink_mass"], p[..., :4].sum(-1).reshape(-1), rtol=1e-4, atol=1e-6)
    local = np.array([[p[h, t, max(0, t - 15) : t + 1].sum() for t in range(T)] for h in range(p.shape[0])])
    np.testing.assert_allclose(rows["local_mass"], local.reshape(-1), rtol=1e-4, atol=1e-6)
    distance = (p * np.maximum(np.arange(T)[:, None] - np.arange(T)[None, :], 0)).sum(-1)
    np.testing.assert_allclose(rows["mean_distance"], distance.reshape(-1), rtol=1e-4, atol=1e-4)
    assert (rows["k90"].to_numpy() == _k(p, 0.9).reshape(-1)).mean() > 0.99  # ties at the boundary may differ
    if model == "dense":
        assert rows["recall"].isna().all()
        return
    dense = cache[f"blocks.{LAYER}.attn.hook_dense_pattern"][0].double().numpy()  # [H, T, T]
    idx = cache[f"blocks.{LAYER}.indexer.hook_topk"][0].numpy()  # [T, k]
    mass = dense.sum(0) / dense.sum(0).sum(-1, keepdims=True)  # [T, T]
    recall = np.array([mass[t, idx[t][idx[t] >= 0]].sum() for t in range(T)])
    needed = [set(sample.needed[t].tolist()) for t in range(T)]
    hit = np.array([len(n & set(idx[t].tolist())) / len(n) if n else np.nan for t, n in enumerate(needed)])
    head0 = rows[rows["head"] == 0]
    np.testing.assert_allclose(head0["recall"], recall, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head0["needed_recall"], hit, rtol=1e-5, atol=1e-6)
    assert (head0["n_needed"].fillna(0).to_numpy() == [len(n) for n in needed]).all()
    head_recall = np.array([[dense[h, t, idx[t][idx[t] >= 0]].sum() for t in range(T)] for h in range(p.shape[0])])
    np.testing.assert_allclose(rows["head_recall"], head_recall.reshape(-1), rtol=1e-4, atol=1e-5)


def test_selections_topk_and_indexer_stats_equal_hooks(tiny_captured):
    sid = "code-64-0"
    _, cache = _hooks(tiny_captured, "dsa", sid)
    sel = _rows(tiny_captured, "selections", "dsa", sid, ["query_pos"])
    idx = cache[f"blocks.{LAYER}.indexer.hook_topk"][0].numpy()  # [T, k]
    assert all(np.array_equal(s, i[i >= 0]) for s, i in zip(sel["selected"], idx, strict=True))
    assert sel["needed"].isna().all()  # text has no ground truth
    top = _rows(tiny_captured, "attention_topk", "dsa", sid, ["head", "query_pos"])
    pattern = cache[f"blocks.{LAYER}.attn.hook_pattern"][0].numpy()  # [H, T, T]
    for row in top.sample(20, random_state=0).itertuples():  # k <= m: the lists redraw the sparse map exactly
        nonzero = np.flatnonzero(pattern[row.head, row.query_pos])
        assert sorted(row.keys) == nonzero.tolist()
        np.testing.assert_allclose(row.weights, pattern[row.head, row.query_pos, row.keys], rtol=1e-5)
    ix = _rows(tiny_captured, "indexer_stats", "dsa", sid, ["indexer_head", "query_pos"])
    scores = cache[f"blocks.{LAYER}.indexer.hook_scores"][0].double().numpy()  # [T, T]
    dense = cache[f"blocks.{LAYER}.attn.hook_dense_pattern"][0].double().numpy()  # [H, T, T]
    combined = ix[ix["indexer_head"] == -1].set_index("query_pos")
    for t in (5, 31, 63):
        row, allowed = combined.loc[t], scores[t, : t + 1]
        np.testing.assert_allclose(row["score_q90"], np.quantile(allowed, 0.9), rtol=1e-4)
        soft = np.exp(allowed - allowed.max()) / np.exp(allowed - allowed.max()).sum()
        assert row["keys_90"] == np.searchsorted(np.cumsum(np.sort(soft)[::-1]), 0.9) + 1
        r = [np.corrcoef(allowed, dense[h, t, : t + 1])[0, 1] for h in range(dense.shape[0])]
        np.testing.assert_allclose(row["main_head_corr"], r, rtol=1e-3, atol=1e-4)
    weights = cache[f"blocks.{LAYER}.indexer.hook_weights"][0].numpy()  # [T, HI]
    np.testing.assert_allclose(ix[ix["indexer_head"] == 1]["weight"], weights[:, 1], rtol=1e-6)


def test_stat_helpers_on_small_inputs():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.9, 0.1, 0.0, 0.0]])
    k50, k90 = keys_for_mass(probs, (0.5, 0.9))
    assert k50.tolist() == [1, 1] and k90.tolist() == [3, 1]
    rows = torch.tensor([[4.0, 3.0, 2.0, 1.0]]).expand(4, 4).unsqueeze(0)  # [1, T=4, S=4] sorted descending
    n = torch.arange(1, 5)
    q50 = _sorted_quantiles(rows, n, (0.5,))[0]
    np.testing.assert_allclose(q50[0], [4.0, 3.5, 3.0, 2.5])  # median of the first n sorted values
    pattern = torch.full((1, 1, 5, 5), 1.0).tril()  # [B, H, T, S]
    assert local_mass(pattern, 2)[0, 0].tolist() == [1.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("name", TABLES)
def test_tables_read_with_pandas_pyarrow_and_dask_in_declared_schema(tiny_captured, name):
    schema = SCHEMAS[name]
    table = arrow_dataset(tiny_captured, name).to_table()
    assert table.schema.remove_metadata().equals(schema.remove_metadata())
    frame = tiny_captured.read_table(name)
    assert list(frame.columns) == schema.names and len(frame) == table.num_rows > 0
    expected = schema.empty_table().to_pandas().dtypes
    lazy = dask_frame(tiny_captured, name)
    assert {c: _kind(d) for c, d in lazy.dtypes.items()} == {c: _kind(expected[c]) for c in lazy.columns}
    files = [p for p in tiny_captured.fs.find(tiny_captured.table_path(name)) if p.endswith(".parquet")]
    assert lazy.npartitions == len(files)  # one Dask partition per capture file
    keys = [c for c in ("model", "seq_len", "layer", "sample_id", "head", "indexer_head", "query_pos") if c in frame]
    a = frame.sort_values(keys).reset_index(drop=True)
    b = lazy.compute()[schema.names].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        a.drop(columns=[c for c in a if a[c].dtype == object]),
        b.drop(columns=[c for c in b if b[c].dtype == object]),
        check_dtype=False,
    )


def _kind(dtype) -> str:
    """A dtype's name, with every string flavour (NaN- or NA-backed) as 'string'."""
    return "string" if isinstance(dtype, pd.StringDtype) else str(dtype)


def _mtimes(store) -> dict[str, float]:
    return {p: os.path.getmtime(p) for p in store.fs.find(f"{store.run_dir}/tables") if p.endswith(".parquet")}


def test_rerun_skips_completed_partitions_and_rewrites_only_what_is_missing(tiny_captured, run_copy):
    store = run_copy(tiny_captured)
    before = _mtimes(store)
    results = capture_run(store, CFG)
    assert all(r.files_written == 0 and r.partitions_skipped == 2 for r in results)  # tiny: 2 layers per unit
    assert _mtimes(store) == before
    victim = sorted(p for p in before if "/selections/" in p)[0]
    os.remove(victim)
    results = capture_run(store, CFG)
    assert 1 <= sum(r.files_written for r in results) <= len(TABLES)  # only the (chunk, layer) that lost a file
    after = _mtimes(store)
    assert set(after) == set(before)
    assert sum(after[p] != before[p] for p in before if p != victim) <= len(TABLES) - 1
    pd.testing.assert_frame_equal(store.read_table("selections"), tiny_captured.read_table("selections"))


def test_changed_plan_drops_the_old_capture(tiny_captured, run_copy):
    store = run_copy(tiny_captured)
    cfg = dataclasses.replace(CFG, seq_lens=(32,), n_samples=1, topk_samples=0)
    capture_run(store, cfg)
    qs = store.read_table("query_stats")
    assert set(qs["seq_len"]) == {32} and qs["sample_id"].str.endswith("-0").all()
    assert store.read_table("attention_topk").empty
    with pytest.raises(ValueError, match="exceeds model"):
        capture_run(store, dataclasses.replace(CFG, seq_lens=(512,)))


def test_a_retrained_model_is_recaptured(tiny_captured, run_copy):
    """The plan holds each model's file hash: new weights under the same name drop the old capture."""
    store = run_copy(tiny_captured)
    cfg = dataclasses.replace(CFG, seq_lens=(32,), n_samples=1)
    capture_run(store, cfg)
    before = store.read_table("query_stats", filters=[("model", "=", "dsa")])
    assert sum(r.files_written for r in capture_run(store, cfg)) == 0  # same models: everything is kept
    store.save_model("dense", store.load_model("dense"))  # the same weights saved again: still the same model
    assert sum(r.files_written for r in capture_run(store, cfg)) == 0
    model = store.load_model("dsa")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    store.save_model("dsa", model)  # "retrained"
    results = capture_run(store, cfg)
    assert sum(r.files_skipped for r in results) == 0 and all(r.files_written > 0 for r in results)
    after = store.read_table("query_stats", filters=[("model", "=", "dsa")])
    key = ["sample_id", "layer", "head", "query_pos"]
    a, b = before.sort_values(key).reset_index(drop=True), after.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) and not np.allclose(a["entropy"], b["entropy"])


def test_files_are_single_row_groups(tiny_captured):
    import pyarrow.parquet as pq

    for path in tiny_captured.fs.find(tiny_captured.table_path("query_stats")):
        if path.endswith(".parquet"):
            meta = pq.ParquetFile(path).metadata
            assert meta.num_row_groups == 1 and meta.num_rows > 0
            assert pa.types.is_int32(pq.read_schema(path).field("query_pos").type)
