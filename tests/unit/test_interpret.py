"""Phase 1 from the capture tables: summary tables, offline charts, and a report without network references."""

import numpy as np
import pandas as pd
import pytest

from sparselens.analysis.headmaps import rebuild_map
from sparselens.capture.read import arrow_dataset, dask_frame
from sparselens.config import get_preset
from sparselens.interpret import interpret_run, maps, summaries
from sparselens.storage import SCHEMAS
from sparselens.viz.report import BUNDLE_URLS, NETWORK, bundle_urls, without_bundle

PHASE1_TABLES = [n for n in SCHEMAS if n.startswith("phase1_")]


@pytest.fixture(scope="module")
def phase1(tiny_captured, tmp_path_factory):
    """The tiny capture with Phase 1 run on a private copy (so other tests see only capture tables)."""
    import shutil

    from sparselens.storage import RunStore

    dest = tmp_path_factory.mktemp("phase1")
    shutil.copytree(tiny_captured.run_dir, dest / "runs" / tiny_captured.run_id)
    store = RunStore(str(dest), tiny_captured.run_id)
    interpret_run(store, get_preset("tiny").interpret)
    return store


@pytest.mark.parametrize("name", PHASE1_TABLES)
def test_phase1_tables_read_back_in_declared_schema(phase1, name):
    frame = phase1.read_table(name)
    assert len(frame) > 0 and list(frame.columns) == SCHEMAS[name].names
    assert arrow_dataset(phase1, name).to_table().schema.remove_metadata().equals(SCHEMAS[name].remove_metadata())
    assert len(dask_frame(phase1, name).compute()) == len(frame)


def test_scaling_recall_is_the_mean_over_late_queries(phase1):
    k = 8  # tiny preset
    qs = phase1.read_table("query_stats", filters=[("model", "=", "dsa"), ("seq_len", "=", 128), ("layer", "=", 1)])
    direct = qs[qs["query_pos"] >= k]["recall"].mean()
    scaling = phase1.read_table("phase1_scaling")
    row = scaling[
        (scaling.model == "dsa") & (scaling.content_type == "all") & (scaling.seq_len == 128) & (scaling.layer == 1)
    ]
    np.testing.assert_allclose(row["recall_mean"].item(), direct, rtol=1e-5)


def test_charts_render_offline_and_the_report_has_no_network_references(phase1):
    charts = phase1.read_table("phase1_charts")
    names = set(charts["name"])
    assert {"entropy", "indexer-corr", "indexer-mass", "scaling-recall", "scaling-keys"} <= names
    assert any(n.startswith("maps-") for n in names) and any(n.startswith("profiles-") for n in names)
    assert any(n.startswith("tokens-") for n in names)
    for row in charts.itertuples():
        png = phase1.read_bytes(row.png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000, row.name
        page = phase1.read_text(row.html)
        assert "<script src=" not in page and "vega" in page and len(page) > 100_000, row.name  # bundled, no CDN
    report = phase1.read_text("report.html")
    assert "Phase 1" in report and report.count('class="vega-spec"') == len(charts)  # every chart, as its spec
    assert not NETWORK.search(without_bundle(report)), NETWORK.search(without_bundle(report)).group(0)
    assert set(bundle_urls(report)) <= set(BUNDLE_URLS)
    key = phase1.read_table("phase1_recall_length")
    assert set(key["layer"]) == {0, 1} and key["status"].str.len().gt(0).all()


def test_recall_length_interpolates_in_log_length():
    scaling = pd.DataFrame(
        {"content_type": "all", "layer": 0, "seq_len": [128, 256, 512, 1024], "recall_mean": [0.99, 0.95, 0.85, 0.7]}
    )
    row = summaries.recall_length(scaling, 0.9).iloc[0]
    assert row.first_below == 512 and row.crossing_len == pytest.approx(2**8.5)
    never = summaries.recall_length(scaling.assign(recall_mean=0.95), 0.9).iloc[0]
    assert never.first_below is None or pd.isna(never.first_below)
    assert "every captured length" in never.status


def test_maps_pooling_and_profiles_from_topk_rows():
    rows = pd.DataFrame(
        {
            "head": [0, 0, 0, 0],
            "query_pos": [0, 1, 2, 3],
            "keys": [np.array([0]), np.array([0, 1]), np.array([2, 0]), np.array([0, 3])],
            "weights": [np.array([1.0]), np.array([0.5, 0.5]), np.array([0.9, 0.1]), np.array([0.6, 0.4])],
        }
    )
    short = rows.assign(weights=[np.array([1.0]), np.array([0.5, 0.5]), np.array([0.9, 0.1]), np.array([0.5, 0.3])])
    kept = maps.attention_maps(short, 1, 4)[0]  # query 3 kept 0.8 of its row: the rest goes to its other keys
    np.testing.assert_allclose(kept[3], [0.5, 0.1, 0.1, 0.3], rtol=1e-6)
    np.testing.assert_allclose(kept[3], rebuild_map(short.query_pos, list(short["keys"]), list(short.weights), 4)[3])
    full = maps.attention_maps(rows, 1, 4)  # [1, 4, 4]
    assert np.isnan(full[0, 0, 1]) and full[0, 2, 2] == pytest.approx(0.9) and full[0, 3, 0] == pytest.approx(0.6)
    pooled, size = maps.pool_maps(full, 2)
    assert size == 2 and np.isnan(pooled[0, 0, 1])
    assert pooled[0, 1, 0] == pytest.approx((0.1 + 0.6) / 2)  # mass on keys 0-1 per query of block 1
    slash, vertical = maps.profiles(full)
    assert slash[0, 0] == pytest.approx((1.0 + 0.5 + 0.9 + 0.4) / 4)  # the diagonal, mean over 4 queries
    assert vertical[0, 0] == pytest.approx((1.0 + 0.5 + 0.1 + 0.6) / 4)


def test_token_view_marks_query_selected_and_missed_keys():
    sel = pd.DataFrame(
        {
            "layer": 0,
            "query_pos": [0, 1, 2, 3],
            "token": [97, 32, 10, 98],
            "selected": [np.array([0]), np.array([0, 1]), np.array([1, 2]), np.array([1, 3])],
            "needed": [None, None, None, np.array([0, 1])],
        }
    )
    assert maps.pick_query(sel, k=2) == 3
    view = maps.token_view(sel, 3, width=2)
    assert view["state"].tolist() == ["needed, missed", "selected & needed", "not selected", "query"]
    assert view["char"].tolist() == ["a", "\u00b7", "\u21b5", "b"] and view["line"].tolist() == [0, 0, 1, 1]
