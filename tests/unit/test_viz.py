"""Viz building blocks: the PNG encoder, the log colour map, offline chart rendering and the report builder."""

import json
import struct
import zlib

import altair as alt
import numpy as np
import pandas as pd
import pytest

from sparselens.storage import RunStore
from sparselens.viz.attention_charts import Panel, heatmap_grid
from sparselens.viz.raster import COLOR_STOPS, FUTURE_RGB, colorize, colorize_indexed, png_bytes, png_palette_bytes
from sparselens.viz.report import (
    BUNDLE_START,
    BUNDLE_URLS,
    NETWORK,
    build_report,
    bundle_urls,
    chart_figure,
    figure_html,
    read_sections,
    table_html,
    without_bundle,
    write_section,
)
from sparselens.viz.save import chart_html, chart_png, save_chart


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder for what png_bytes writes (RGB, filter 0)."""
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    w, h = size
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_roundtrip_and_colour_map_ends():
    values = np.array([[1.0, np.nan, 1e-4], [1e-9, 1e-2, 0.5]])
    rgb = colorize(values, 1e-4, 1.0)
    assert tuple(rgb[0, 1]) == FUTURE_RGB
    first, last = COLOR_STOPS[0], COLOR_STOPS[-1]
    assert tuple(rgb[0, 2]) == tuple(int(first[i : i + 2], 16) for i in (1, 3, 5)) == tuple(rgb[1, 0])
    assert tuple(rgb[0, 0]) == tuple(int(last[i : i + 2], 16) for i in (1, 3, 5))
    np.testing.assert_array_equal(_decode_png(png_bytes(rgb)), rgb)


def test_heatmap_renders_to_png_offline_with_labelled_axes():
    t = 40
    values = np.tril(np.full((t, t), 0.02))
    values[np.triu_indices(t, 1)] = np.nan
    chart = heatmap_grid([[Panel("dense · layer 0 · head 0", values, t)]], "title", "sub", 120, "attention weight")
    png = chart_png(chart)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    spec = chart.to_dict()
    text = str(spec)
    assert "key position" in text and "query position" in text and "attention weight" in text
    page = chart_html(chart)
    assert "<script src=" not in page


def test_report_orders_sections_escapes_and_replaces(tmp_path):
    store = RunStore(str(tmp_path), "r")
    write_section(store, "phase1", "Phase 1 <maps>", "<p>one</p>", order=30)
    write_section(store, "train", "Training", table_html(pd.DataFrame({"loss": [1.23456]})), order=10)
    write_section(store, "phase1", "Phase 1 <maps>", "<p>two</p>", order=30)
    assert [s["key"] for s in read_sections(store)] == ["train", "phase1"]
    build_report(store)
    page = store.read_text("report.html")
    assert page.index("Training") < page.index("Phase 1 &lt;maps&gt;")
    assert "<p>two</p>" in page and "<p>one</p>" not in page and "1.235" in page


def test_figures_embed_specs_and_the_report_inlines_one_offline_bundle(tmp_path):
    store = RunStore(str(tmp_path), "r")
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x:Q", y="y:Q")
    spec = json.loads(chart.to_json())
    spec["title"] = "ends with </script> inside"
    with pytest.raises(TypeError, match="spec"):
        figure_html(b"\x89PNG...", "png bytes are refused")
    saved = save_chart(store, "charts/t", "line", "A line", chart)
    assert json.loads(store.read_text(saved.spec)) == json.loads(saved.spec_json)
    body = figure_html(json.dumps(spec), "one") + chart_figure(store, saved.html, "two")
    body += chart_figure(store, "charts/t/missing.html", "three")  # no spec saved: a link to the page
    write_section(store, "s", "S", body, order=10)
    write_section(store, "u", "U", figure_html(spec, "four"), order=20)
    build_report(store)
    page = store.read_text("report.html")
    assert page.count('class="vega-spec"') == 3 and page.count(BUNDLE_START) == 1  # one bundle for all
    assert '<a href="charts/t/missing.html">three</a>' in page
    assert "</script> inside" not in page and "<\\/script> inside" in page  # cannot close its script tag
    assert "$schema" not in without_bundle(page) and "vegaEmbed" in page
    assert not NETWORK.search(without_bundle(page)) and set(bundle_urls(page)) <= set(BUNDLE_URLS)
    assert "<img" not in without_bundle(page) and 500_000 < len(page) < 2_000_000  # the ~0.9 MB bundle, no images
    write_section(store, "s", "S", "<p>no charts</p>", order=10)
    write_section(store, "u", "U", "<p>none</p>", order=20)
    build_report(store)
    assert BUNDLE_START not in store.read_text("report.html")  # no figure, no bundle


def test_palette_png_roundtrip_and_colour_levels():
    values = np.array([[1.0, np.nan, 1e-4], [1e-9, 1e-2, 0.5]])
    index, palette = colorize_indexed(values, 1e-4, 1.0, levels=9)
    assert index.tolist() == [[8, 9, 0], [0, 4, 7]] and tuple(palette[9]) == FUTURE_RGB  # 2 levels per decade
    np.testing.assert_array_equal(palette[[0, 8]], colorize(np.array([[1e-4, 1.0]]), 1e-4, 1.0)[0])
    data = png_palette_bytes(index, palette)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"PLTE" in data
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(2, 4)
    np.testing.assert_array_equal(raw[:, 1:], index)
    with pytest.raises(ValueError, match="palette"):
        png_palette_bytes(index, palette[:5])


def test_a_report_over_budget_links_its_largest_charts(tmp_path, monkeypatch):
    import sparselens.viz.report as report

    store = RunStore(str(tmp_path), "r")
    chart = alt.Chart(pd.DataFrame({"x": range(3000), "y": range(3000)})).mark_point().encode(x="x:Q", y="y:Q")
    small = alt.Chart(pd.DataFrame({"x": [1]})).mark_point().encode(x="x:Q")
    body = figure_html(chart.to_json(), "big", "charts/big.html") + figure_html(small.to_json(), "small", "s.html")
    write_section(store, "s", "S", body, order=10)
    monkeypatch.setattr(report, "REPORT_BUDGET", len(report.vega_bundle()) + 60_000)
    build_report(store)
    page = store.read_text("report.html")
    assert page.count('class="vega-spec"') == 1 and '<a href="charts/big.html">big</a>: interactive chart' in page
    assert len(page.encode()) <= report.REPORT_BUDGET


def _browser() -> str | None:
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium here (apt install chromium) to render the report")
def test_report_draws_its_charts_in_a_headless_browser(tmp_path):
    """The offline report, opened as a reader would: every embedded chart draws (a canvas), none fails."""
    import subprocess

    store = RunStore(str(tmp_path), "r")
    chart = alt.Chart(pd.DataFrame({"x": [1, 2, 3], "y": [3, 4, 2]})).mark_line().encode(x="x:Q", y="y:Q")
    write_section(store, "s", "S", figure_html(chart.to_json(), "a line") + figure_html(chart.to_json(), "again"), 10)
    build_report(store)
    url = "file://" + store.path("report.html")
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", url]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<canvas") == 2 and dom.count("chart failed to draw") == 1  # only the script's own text
