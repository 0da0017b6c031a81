"""Viz building blocks: the PNG encoder, the log colour map, offline chart rendering and the report builder."""

import struct
import zlib

import numpy as np
import pandas as pd

from sparselens.storage import RunStore
from sparselens.viz.attention_charts import Panel, heatmap_grid
from sparselens.viz.raster import COLOR_STOPS, FUTURE_RGB, colorize, png_bytes
from sparselens.viz.report import build_report, read_sections, table_html, write_section
from sparselens.viz.save import chart_html, chart_png


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
