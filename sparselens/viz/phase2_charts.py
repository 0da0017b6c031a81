"""Altair charts of Phase 2: kind maps, head x content matrix, content x kind, Pareto curves, clusters, sparsify.

Each builder takes a slice of a `phase2_*` table as a DataFrame and returns a chart; nothing is read here. Kinds
always get the same colours.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from sparselens.analysis.patterns import KINDS

KIND_COLORS = ("#1f77b4", "#7f7f7f", "#17becf", "#d62728", "#2ca02c", "#ff7f0e", "#c7c7c7")  # in KINDS order
METHOD_ORDER = ("oracle", "topk_per_query", "indexer", "vertical_slash", "block", "sink_local", "local", "sink")
METHOD_COLORS = ("#000000", "#7f7f7f", "#d62728", "#9467bd", "#2ca02c", "#17becf", "#1f77b4", "#bcbd22")


def _kind_color(title: str = "pattern kind") -> alt.Color:
    return alt.Color("kind:N", title=title, scale=alt.Scale(domain=list(KINDS), range=list(KIND_COLORS)))


def _method_color() -> alt.Color:
    return alt.Color(
        "method:N",
        title="method",
        sort=list(METHOD_ORDER),
        scale=alt.Scale(domain=list(METHOD_ORDER), range=list(METHOD_COLORS)),
    )


def _titled(chart, title: str, subtitle: str | list[str]):
    return chart.properties(title=alt.Title(title, subtitle=subtitle))


def _head_label(df: pd.DataFrame) -> pd.Series:
    return "L" + df["layer"].astype(str) + "·H" + df["head"].astype(str)


def kind_map_chart(stability: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Layer x head grid coloured by each head's modal kind over content types; text = stability.

    stability: phase2_kind_stability rows (model, seq_len, layer, head, modal_kind, stability).
    """
    df = stability.rename(columns={"modal_kind": "kind"})
    base = alt.Chart(df).encode(x=alt.X("head:O", title="head"), y=alt.Y("layer:O", title="layer"))
    cells = base.mark_rect(stroke="white").encode(
        color=_kind_color("modal kind"),
        tooltip=["model", "seq_len", "layer", "head", "kind", "kinds"],
    )
    text = base.mark_text(fontSize=10).encode(text=alt.Text("stability:Q", format=".0%"))
    chart = alt.layer(cells, text).properties(width=110, height=110)
    return _titled(
        chart.facet(row=alt.Row("model:N", title="model"), column=alt.Column("seq_len:O", title="sequence length")),
        title,
        subtitle,
    )


def head_content_chart(heads: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Head x content-type matrix of kinds (the kind-stability matrix), text = fitted coverage."""
    df = heads.assign(head_label=_head_label(heads))
    base = alt.Chart(df).encode(
        x=alt.X("content_type:N", title="content type"), y=alt.Y("head_label:N", title="layer · head", sort=None)
    )
    cells = base.mark_rect(stroke="white").encode(
        color=_kind_color(), tooltip=["head_label", "content_type", "kind", "coverage", "fit_density"]
    )
    text = base.mark_text(fontSize=9).encode(text=alt.Text("coverage:Q", format=".2f"))
    chart = alt.layer(cells, text).properties(width=220, height=alt.Step(16))
    return _titled(chart.facet(column=alt.Column("model:N", title="model")), title, subtitle)


def content_kind_chart(dist: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Content type x kind heatmap of the share of heads, text = share (and mean coverage in the tooltip)."""
    base = alt.Chart(dist).encode(
        x=alt.X("kind:N", title="pattern kind", sort=list(KINDS)), y=alt.Y("content_type:N", title="content type")
    )
    cells = base.mark_rect().encode(
        color=alt.Color("share:Q", title="share of heads", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=["content_type", "kind", "n_heads", "share", "coverage", "fit_density"],
    )
    text = base.mark_text(fontSize=10).encode(text=alt.Text("share:Q", format=".0%"))
    chart = alt.layer(cells, text).properties(width=240, height=alt.Step(22))
    return _titled(chart.facet(column=alt.Column("model:N", title="model")), title, subtitle)


def _density_axis(short: bool = False) -> alt.X:
    title = "density" if short else "density (share of the causal area kept)"
    axis = alt.Axis(values=[0.01, 0.1, 1], format="~g") if short else alt.Axis(format="~g")
    return alt.X("density:Q", title=title, axis=axis, scale=alt.Scale(type="log", domain=[1 / 256, 1]))


def pareto_chart(curves: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Mean recall against density of every method (mean over heads and content types), one panel per model."""
    df = curves.groupby(["model", "method", "density"], as_index=False)["recall"].mean()
    chart = (
        alt.Chart(df)
        .mark_line(point=alt.OverlayMarkDef(size=12))
        .encode(
            x=_density_axis(),
            y=alt.Y("recall:Q", title="recall (dense attention mass kept)", scale=alt.Scale(domain=[0, 1])),
            color=_method_color(),
            tooltip=["method", "density", "recall"],
        )
    )
    return _titled(
        chart.properties(width=260, height=220).facet(column=alt.Column("model:N", title="model")), title, subtitle
    )


def pareto_heads_chart(curves: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Per-head recall-density curves (mean over content types) of one model: rows layers, columns heads."""
    df = curves.groupby(["layer", "head", "method", "density"], as_index=False)["recall"].mean()
    grid = sorted(df["density"].unique())
    df = df[df["density"].isin(grid[::-1][::2])]  # every other density: small multiples need fewer points
    chart = (
        alt.Chart(df)
        .mark_line()
        .encode(
            x=_density_axis(short=True),
            y=alt.Y("recall:Q", title="recall", scale=alt.Scale(domain=[0, 1])),
            color=_method_color(),
        )
    )
    return _titled(
        chart.properties(width=130, height=100).facet(
            row=alt.Row("layer:O", title="layer"), column=alt.Column("head:O", title="head")
        ),
        title,
        subtitle,
    )


def cluster_chart(points: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """2-D projection of every head (model scope): colour = KMeans cluster, shape = pattern kind."""
    df = points.assign(cluster=points["kmeans"].astype(str))
    chart = (
        alt.Chart(df)
        .mark_point(filled=True, size=45, opacity=0.8)
        .encode(
            x=alt.X("x:Q", title="PC 1 of the standardised features"),
            y=alt.Y("y:Q", title="PC 2"),
            color=alt.Color("cluster:N", title="KMeans cluster"),
            shape=alt.Shape("kind:N", title="pattern kind", sort=list(KINDS)),
            tooltip=["model", "content_type", "seq_len", "layer", "head", "kind", "cluster", "hdbscan"],
        )
    )
    return _titled(
        chart.properties(width=300, height=260)
        .facet(column=alt.Column("model:N", title="model"))
        .resolve_scale(x="independent", y="independent"),
        title,
        subtitle,
    )


def sparsify_chart(rows: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Validation-loss change when each head is restricted to its fitted pattern (content 'all')."""
    df = rows.assign(head_label=_head_label(rows))
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("head_label:N", title="layer · head", sort=None),
            y=alt.Y("delta_loss:Q", title="Δ validation loss (nats / token)"),
            color=_kind_color(),
            tooltip=["head_label", "kind", "coverage", "fit_density", "delta_loss"],
        )
    )
    return _titled(
        chart.properties(width=320, height=200).facet(column=alt.Column("model:N", title="model")), title, subtitle
    )


def relevance_chart(rel: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Share of DSA-selected keys with each property beside its chance level, per layer and content type."""
    parts = []
    for name, label in (("needed", "ground-truth needed"), ("same_byte", "same byte"), ("induction", "induction")):
        for stat, what in (("share", "selected"), ("chance", "chance")):
            part = rel[["content_type", "layer", f"{name}_{stat}"]].rename(columns={f"{name}_{stat}": "value"})
            parts.append(part.assign(property=label, measure=what))
    df = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
    return _titled(_relevance_grid(df), title, subtitle)


def _relevance_grid(df: pd.DataFrame) -> alt.FacetChart:
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("layer:O", title="layer"),
            xOffset=alt.XOffset("measure:N"),
            y=alt.Y("value:Q", title="share of keys"),
            color=alt.Color(
                "measure:N", title="keys", scale=alt.Scale(domain=["selected", "chance"], range=["#d62728", "#bbbbbb"])
            ),
            tooltip=["content_type", "layer", "property", "measure", "value"],
        )
        .properties(width=120, height=110)
        .facet(row=alt.Row("property:N", title=None), column=alt.Column("content_type:N", title="content type"))
        .resolve_scale(y="independent")
    )


def ground_truth_chart(gt: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Mass each head puts on the ground-truth needed keys (synthetic tasks), layer x head; text = lift."""
    base = alt.Chart(gt).encode(x=alt.X("head:O", title="head"), y=alt.Y("layer:O", title="layer"))
    cells = base.mark_rect(stroke="white").encode(
        color=alt.Color("needed_mass:Q", title="mass on needed keys", scale=alt.Scale(scheme="greens")),
        tooltip=["model", "content_type", "layer", "head", "kind", "needed_mass", "needed_argmax", "lift"],
    )
    text = base.mark_text(fontSize=9).encode(text=alt.Text("lift:Q", format=".1f"))
    chart = alt.layer(cells, text).properties(width=100, height=100)
    return _titled(
        chart.facet(row=alt.Row("model:N", title="model"), column=alt.Column("content_type:N", title="task")),
        title,
        subtitle,
    )
