"""Altair charts of Phase 4 (the `phase4_benchmark` table): loss against prefill and decode time with the Pareto
front, the needle-retrieval grid, and decode ms per token against context.

Each builder takes a tidy slice as a DataFrame and returns a chart; nothing is read here.
"""

from __future__ import annotations

import altair as alt
import pandas as pd


def _titled(chart, title: str, subtitle: str):
    return chart.properties(title=alt.Title(title, subtitle=subtitle))


def pareto_chart(points: pd.DataFrame, x_title: str, title: str, subtitle: str) -> alt.LayerChart:
    """One point per model: time (x, log, with its IQR) against mean held-out loss (y); the front drawn as a line.

    points: columns model, family, ms, ms_low, ms_high, loss, front (bool: on the Pareto front).
    """
    base = alt.Chart(points).encode(
        x=alt.X("ms:Q", title=x_title, scale=alt.Scale(type="log", zero=False)),
        y=alt.Y("loss:Q", title="mean held-out loss (nats/token)", scale=alt.Scale(zero=False)),
    )
    bars = base.mark_rule(opacity=0.5).encode(x="ms_low:Q", x2="ms_high:Q", color=alt.Color("family:N"))
    dots = base.mark_point(filled=True, size=80).encode(
        color=alt.Color("family:N", title="family"),
        shape=alt.Shape("front:N", title="on the Pareto front"),
        tooltip=["model", "family", "ms", "loss"],
    )
    labels = base.mark_text(align="left", dx=6, dy=-6, fontSize=10).encode(text="model:N")
    front = (
        alt.Chart(points[points["front"]].sort_values("ms"))
        .mark_line(strokeDash=[4, 3], color="#666", interpolate="step-after")
        .encode(x="ms:Q", y="loss:Q")
    )
    return _titled((front + bars + dots + labels).properties(width=420, height=280), title, subtitle)


def retrieval_chart(grid: pd.DataFrame, title: str, subtitle: str, loss: bool = False) -> alt.FacetChart:
    """Needle accuracy (or, with `loss`, the mean loss on the answer digits) per context length (rows) and depth
    (columns), one panel per model.

    grid: columns model, seq_len, depth, value, n.
    """
    scale = alt.Scale(scheme="viridis", reverse=True) if loss else alt.Scale(domain=[0, 1], scheme="viridis")
    middle = float(grid["value"].median()) if loss else 0.5
    base = alt.Chart(grid).encode(
        x=alt.X("depth:O", title="needle depth"),
        y=alt.Y("seq_len:O", title="context (tokens)", sort="descending"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("value:Q", title="answer nats" if loss else "accuracy", scale=scale),
        tooltip=["model", "seq_len", "depth", "value", "n"],
    )
    light = alt.datum.value < middle if loss else alt.datum.value > middle
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("value:Q", format=".2f"),
        color=alt.condition(light, alt.value("black"), alt.value("white")),
    )
    chart = (cells + text).properties(width=150, height=110).facet(facet=alt.Facet("model:N", title=None), columns=4)
    return _titled(chart, title, subtitle)


def decode_chart(decode: pd.DataFrame, title: str, subtitle: str) -> alt.LayerChart:
    """Median decode ms per token against context (log-log), a band for the IQR, one line per model.

    decode: columns model, family, seq_len, value, low, high.
    """
    base = alt.Chart(decode).encode(
        x=alt.X("seq_len:Q", title="context (tokens)", scale=alt.Scale(type="log")),
        color=alt.Color("model:N", title="model"),
    )
    band = base.mark_area(opacity=0.15).encode(y="low:Q", y2="high:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title="decode ms per token (median)", scale=alt.Scale(type="log")),
        tooltip=["model", "family", "seq_len", "value", "low", "high"],
    )
    return _titled((band + line).properties(width=420, height=280), title, subtitle)
