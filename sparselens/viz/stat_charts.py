"""Altair charts of Phase 1 summaries: entropy, indexer heads, and how everything scales with length.

Each builder takes a `phase1_*` table (or a slice of it) as a DataFrame and returns a chart; nothing is read here.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

INDEXER_HEAD_LABEL = "indexer head (-1 = combined I)"


def _titled(chart, title: str, subtitle: str):
    return chart.properties(title=alt.Title(title, subtitle=subtitle))


def entropy_chart(hist: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Entropy histograms per layer (rows) and head (columns), one line per model.

    hist: columns model, layer, head, bin_lo, bin_hi, fraction.
    """
    df = hist.assign(entropy=(hist["bin_lo"] + hist["bin_hi"]) / 2)
    base = (
        alt.Chart(df)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("entropy:Q", title="row entropy (nats)"),
            y=alt.Y("fraction:Q", title="share of queries"),
            color=alt.Color("model:N", title="model"),
        )
    )
    chart = base.properties(width=150, height=90).facet(
        row=alt.Row("layer:O", title="layer"), column=alt.Column("head:O", title="head")
    )
    return _titled(chart, title, subtitle)


def indexer_scores_chart(heads: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Typical score quantiles per indexer head (median over queries of each row's q50/q90/q99/max).

    heads: phase1_indexer_heads rows of one length.
    """
    cols = {"score_q50_med": "q50", "score_q90_med": "q90", "score_q99_med": "q99", "score_max_med": "max"}
    df = heads.melt(id_vars=["layer", "indexer_head"], value_vars=list(cols), var_name="quantity", value_name="score")
    df["quantity"] = df["quantity"].map(cols)
    base = (
        alt.Chart(df)
        .mark_point(filled=True, size=50)
        .encode(
            x=alt.X("indexer_head:O", title=INDEXER_HEAD_LABEL),
            y=alt.Y("score:Q", title="score over a query's allowed keys"),
            color=alt.Color("quantity:N", sort=list(cols.values()), title="row quantile (median over queries)"),
        )
    )
    return _titled(
        base.properties(width=140, height=160).facet(column=alt.Column("layer:O", title="layer")), title, subtitle
    )


def indexer_activity_chart(heads: pd.DataFrame, weight_hist: pd.DataFrame, title: str, subtitle: str):
    """ReLU activity per indexer head (bars) beside the distribution of each head's weight w (lines)."""
    heads = heads[heads["indexer_head"] >= 0]
    active = (
        alt.Chart(heads)
        .mark_bar()
        .encode(
            x=alt.X("indexer_head:O", title="indexer head"),
            y=alt.Y(
                "active_frac_mean:Q", title="fraction of allowed keys with ReLU active", scale=alt.Scale(domain=[0, 1])
            ),
            color=alt.Color("indexer_head:N", title="indexer head"),
        )
        .properties(width=140, height=140)
        .facet(column=alt.Column("layer:O", title="layer"))
    )
    df = weight_hist.rename(columns={"head": "indexer_head"})
    df = df.assign(weight=(df["bin_lo"] + df["bin_hi"]) / 2)
    weights = (
        alt.Chart(df)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("weight:Q", title="head weight w(t, j)"),
            y=alt.Y("fraction:Q", title="fraction of queries"),
            color=alt.Color("indexer_head:N", title="indexer head"),
        )
        .properties(width=140, height=140)
        .facet(column=alt.Column("layer:O", title="layer"))
    )
    return _titled(alt.vconcat(active, weights), title, subtitle)


def indexer_corr_chart(corr: pd.DataFrame, title: str, subtitle: str) -> alt.FacetChart:
    """Mean correlation of each indexer head's scores with each main head's dense attention, per layer."""
    base = alt.Chart(corr).encode(
        x=alt.X("head:O", title="main attention head"),
        y=alt.Y("indexer_head:O", title=INDEXER_HEAD_LABEL),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "corr_mean:Q", title="mean Pearson r", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)
        )
    )
    text = base.mark_text(fontSize=10).encode(text=alt.Text("corr_mean:Q", format=".2f"))
    chart = alt.layer(cells, text).properties(width=120, height=120)
    return _titled(chart.facet(column=alt.Column("layer:O", title="layer")), title, subtitle)


def indexer_mass_chart(curve: pd.DataFrame, k: int, title: str, subtitle: str) -> alt.LayerChart:
    """Keys covering 50/90/99% of the indexer's softmax mass against query position, with the budget k."""
    df = curve.melt(
        id_vars=["layer", "pos_lo"], value_vars=["keys_50", "keys_90", "keys_99"], var_name="mass", value_name="keys"
    )
    df["mass"] = df["mass"].str.replace("keys_", "") + "%"
    lines = (
        alt.Chart()
        .mark_line(point=True)
        .encode(
            x=alt.X("pos_lo:Q", title="query position (bin start)"),
            y=alt.Y("keys:Q", scale=alt.Scale(type="log"), title="keys holding that share of softmax(I)"),
            color=alt.Color("mass:N", title="softmax mass"),
        )
    )
    budget = alt.Chart().mark_rule(strokeDash=[4, 3], color="black").encode(y=alt.datum(k))
    chart = alt.layer(lines, budget, data=df).properties(width=180, height=150)
    return _titled(chart.facet(column=alt.Column("layer:O", title="layer")), title, subtitle)


def _length_axis(df: pd.DataFrame) -> alt.X:
    lengths = sorted(int(t) for t in df["seq_len"].unique())
    return alt.X(
        "seq_len:Q",
        scale=alt.Scale(type="log", base=2),
        axis=alt.Axis(values=lengths),
        title="sequence length (tokens)",
    )


def recall_chart(scaling: pd.DataFrame, threshold: float, title: str, subtitle: str):
    """Indexer recall (and the oracle, dashed) against length, per layer, one panel per content type."""
    df = scaling[scaling["recall_mean"].notna()].melt(
        id_vars=["content_type", "seq_len", "layer"],
        value_vars=["recall_mean", "oracle_recall_mean"],
        var_name="measure",
        value_name="recall",
    )
    df["measure"] = df["measure"].map({"recall_mean": "indexer top-k", "oracle_recall_mean": "oracle top-k"})
    lines = (
        alt.Chart()
        .mark_line()
        .encode(
            x=_length_axis(df),
            y=alt.Y("recall:Q", title="dense mass on the k keys", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("layer:N", title="layer"),
            strokeDash=alt.StrokeDash("measure:N", title="selection"),
        )
    )
    rule = alt.Chart().mark_rule(color="grey").encode(y=alt.datum(threshold))
    chart = alt.layer(lines, rule, data=df).properties(width=150, height=150)
    return _titled(chart.facet(column=alt.Column("content_type:N", title="content type")), title, subtitle)


def keys_needed_chart(scaling: pd.DataFrame, k: int, title: str, subtitle: str) -> alt.LayerChart:
    """Keys needed for 90% and 95% of dense attention mass against length (dense model), with the budget k."""
    df = scaling.melt(
        id_vars=["seq_len", "layer"], value_vars=["k90_mean", "k95_mean"], var_name="mass", value_name="keys"
    )
    df["mass"] = df["mass"].map({"k90_mean": "90%", "k95_mean": "95%"})
    lines = (
        alt.Chart(df)
        .mark_line()
        .encode(
            x=_length_axis(df),
            y=alt.Y("keys:Q", scale=alt.Scale(type="log"), title="keys per head and query (mean)"),
            color=alt.Color("layer:N", title="layer"),
            strokeDash=alt.StrokeDash("mass:N", title="share of dense mass"),
        )
    )
    budget = alt.Chart(pd.DataFrame({"k": [k]})).mark_rule(color="black", strokeDash=[2, 2]).encode(y="k:Q")
    return _titled(alt.layer(lines, budget).properties(width=260, height=200), title, subtitle)


def entropy_scaling_chart(scaling: pd.DataFrame, title: str, subtitle: str) -> alt.LayerChart:
    """Mean attention entropy against length, per layer (colour) and model (dash)."""
    return _titled(
        alt.Chart(scaling)
        .mark_line()
        .encode(
            x=_length_axis(scaling),
            y=alt.Y("entropy_mean:Q", title="mean entropy (nats)"),
            color=alt.Color("layer:N", title="layer"),
            strokeDash=alt.StrokeDash("model:N", title="model"),
        )
        .properties(width=260, height=200),
        title,
        subtitle,
    )
