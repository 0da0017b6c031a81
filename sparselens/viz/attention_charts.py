"""Altair charts of attention itself: map grids (full or block-pooled), long-context profiles, token selection."""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from sparselens.viz.raster import COLOR_STOPS, colorize_indexed, data_url, max_pool, png_palette_bytes, upscale

VMIN, VMAX = 1e-4, 1.0  # colour range of attention weights (log scale); smaller weights share the darkest colour
COLOR_LEVELS = 64  # colours of a map image: 16 per decade of weight
STATE_COLORS = {
    "query": "#d62728",
    "selected & needed": "#2ca02c",
    "selected": "#9ecae1",
    "needed, missed": "#ff7f0e",
    "not selected": "#ffffff",
}


@dataclass(frozen=True)
class Panel:
    """One heatmap: values [R, C] covering positions [0, extent) on both axes, NaN = not allowed (grey)."""

    title: str
    values: np.ndarray
    extent: int


def _legend(title: str) -> alt.Chart:
    """An invisible layer whose only purpose is the colour legend matching `colorize_indexed`."""
    scale = alt.Scale(type="log", domain=[VMIN, VMAX], range=list(COLOR_STOPS), interpolate="rgb")
    data = alt.Data(values=[{"v": VMIN}, {"v": VMAX}])
    return (
        alt.Chart(data)
        .mark_point(opacity=0)
        .encode(color=alt.Color("v:Q", scale=scale, title=title, legend=alt.Legend(format="~e", gradientLength=180)))
    )


def heatmap_panel(panel: Panel, px: int, legend_title: str, density: float = 1.5) -> alt.LayerChart:
    """One map as an image on position axes (keys across, queries down), with the weight legend.

    The image is max-pooled to about the panel's device pixels (px * density), so a pixel shows the largest
    weight it covers, and upscaled when the map is smaller than the panel, so cells stay sharp.
    """
    factor = max(1, int(panel.values.shape[0] // (px * density)))
    index, palette = colorize_indexed(max_pool(panel.values, factor), VMIN, VMAX, COLOR_LEVELS)
    url = data_url(png_palette_bytes(upscale(index, px), palette))  # one byte per pixel: ~1/3 of truecolour
    x = alt.X("x:Q", scale=alt.Scale(domain=[0, panel.extent], nice=False, zero=True), title="key position")
    y = alt.Y("y:Q", scale=alt.Scale(domain=[0, panel.extent], nice=False, reverse=True), title="query position")
    image = (
        alt.Chart(alt.Data(values=[{"x": 0, "y": 0, "url": url}]))
        .mark_image(width=px, height=px, align="left", baseline="top", aspect=False)
        .encode(x=x, y=y, url="url:N")
    )
    return alt.layer(image, _legend(legend_title)).properties(width=px, height=px, title=panel.title)


def heatmap_grid(
    rows: list[list[Panel]], title: str, subtitle: str | list[str], px: int, legend_title: str, density: float = 1.5
) -> alt.VConcatChart:
    """Panels in rows (e.g. one row per model and layer, one column per head) sharing one colour legend;
    `density` is the PNG scale the grid will be rendered at."""
    panels = [alt.hconcat(*[heatmap_panel(p, px, legend_title, density) for p in row]) for row in rows]
    chart = alt.vconcat(*panels)
    return chart.resolve_legend(color="shared").properties(title=alt.Title(title, subtitle=subtitle))


def _log_bins(df: pd.DataFrame, keep_exact: int = 16, bins: int = 40) -> pd.DataFrame:
    """Average `mass` over geometric position bins beyond `keep_exact`, so long profiles stay light."""
    pos = df["position"].to_numpy()
    top = max(int(pos.max()) + 1, keep_exact + 1)
    edges = np.unique(np.concatenate([np.arange(keep_exact), np.geomspace(keep_exact, top, bins).astype(int)]))
    df = df.assign(position=edges[np.searchsorted(edges, pos, side="right") - 1])
    return df.groupby([c for c in df.columns if c != "mass"], observed=True, as_index=False)["mass"].mean()


def profile_chart(df: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Slash (mass vs distance) and vertical (mass vs key position) profiles.

    df: columns model, layer, head, kind, position, mass. Rows = layer, columns = model x kind, colour = head.
    """
    df = _log_bins(df[df["mass"] > 0])
    df = df.assign(
        panel=df["model"]
        + " \u00b7 "
        + df["kind"].map({"slash": "slash (by distance t - s)", "vertical": "vertical (by key position s)"})
    )
    base = (
        alt.Chart(df)
        .mark_line(strokeWidth=1.2)
        .encode(
            x=alt.X("position:Q", scale=alt.Scale(type="symlog"), title="distance t - s  |  key position s"),
            y=alt.Y("mass:Q", scale=alt.Scale(type="log", domain=[1e-6, 1], clamp=True), title="mean weight"),
            color=alt.Color("head:N", title="head"),
        )
    )
    return (
        base.properties(width=180, height=120)
        .facet(row=alt.Row("layer:O", title="layer"), column=alt.Column("panel:N", title=None))
        .properties(title=alt.Title(title, subtitle=subtitle))
    )


def token_view_chart(df: pd.DataFrame, title: str, subtitle: str, width: int) -> alt.VConcatChart:
    """The text with each layer's selected keys for one query highlighted.

    df: columns layer, position, line, col, char, state (see interpret.maps.token_view).
    """
    scale = alt.Scale(domain=list(STATE_COLORS), range=list(STATE_COLORS.values()))
    panels = []
    lines = int(df["line"].max()) + 1
    for layer, g in df.groupby("layer", sort=True):
        base = alt.Chart(g).encode(
            x=alt.X("col:O", axis=None),
            y=alt.Y("line:O", axis=None),
            tooltip=["position:Q", "char:N", "state:N"],
        )
        cells = base.mark_rect(stroke="#dddddd", strokeWidth=0.5).encode(
            color=alt.Color("state:N", scale=scale, title="key state")
        )
        chars = base.mark_text(font="DejaVu Sans Mono", fontSize=11).encode(text="char:N")
        panels.append(alt.layer(cells, chars).properties(width=width * 11, height=lines * 15, title=f"layer {layer}"))
    return alt.vconcat(*panels).resolve_legend(color="shared").properties(title=alt.Title(title, subtitle=subtitle))
