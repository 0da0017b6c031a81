"""Save altair charts as their Vega-Lite spec (what report.html embeds), offline HTML (Vega bundled in by vl-convert,
no CDN) and PNG (vl-convert, no network)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import altair as alt
import vl_convert as vlc

from sparselens.storage import RunStore

FONT = "DejaVu Sans"  # installed with the OS here; vl-convert falls back to another font where it is missing


@dataclass(frozen=True)
class SavedChart:
    """Where one chart went; paths are relative to the run directory. `spec_json` is the Vega-Lite spec that
    `viz.report.figure_html` embeds in report.html; `spec` its file (`<name>.vl.json`, beside the HTML)."""

    name: str
    title: str
    png: str
    html: str
    png_bytes: bytes
    spec: str = ""
    spec_json: str = ""


def spec_path(html_rel: str) -> str:
    """The spec file saved beside a chart's HTML file: `charts/x/name.html` -> `charts/x/name.vl.json`."""
    return html_rel[: -len(".html")] + ".vl.json" if html_rel.endswith(".html") else html_rel + ".vl.json"


def vl_version() -> str:
    """The Vega-Lite version altair writes, in vl-convert's spelling ("6.4")."""
    return ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def chart_png(chart: alt.TopLevelMixin | str, scale: float = 1.5) -> bytes:
    """Render a chart (or its Vega-Lite JSON) to PNG bytes offline: data: URLs only, any other URL is refused."""
    spec = chart if isinstance(chart, str) else chart.to_json()
    return vlc.vegalite_to_png(spec, vl_version=vl_version(), scale=scale, allowed_base_urls=[])


def chart_html(chart: alt.TopLevelMixin | str) -> str:
    """A standalone HTML page with the Vega libraries bundled in: opens without a network (no CDN)."""
    spec = chart if isinstance(chart, str) else chart.to_json()
    return vlc.vegalite_to_html(spec, vl_version=vl_version(), bundle=True)


def save_chart(
    store: RunStore, folder: str, name: str, title: str, chart: alt.TopLevelMixin, scale: float = 1.5
) -> SavedChart:
    """Write `<folder>/<name>.vl.json` (the spec), `.html` and `.png` under the run directory, each atomically."""
    spec = chart.configure(font=FONT).to_json()
    png = chart_png(spec, scale)
    png_rel, html_rel = posixpath.join(folder, f"{name}.png"), posixpath.join(folder, f"{name}.html")
    store.write_bytes(png_rel, png)
    store.write_text(html_rel, chart_html(spec))
    store.write_text(spec_path(html_rel), spec)
    return SavedChart(name, title, png_rel, html_rel, png, spec_path(html_rel), spec)
