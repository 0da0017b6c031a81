"""Phase 3 charts (altair specs): cost against loss per content type, the layer x layer selection overlap, and
the per-layer decision map of every candidate. Builders take the phase3_* tables and return charts."""

from __future__ import annotations

import altair as alt
import pandas as pd

BASELINES = ("dense", "dsa", "reference", "oracle")


def cost_loss_chart(candidates: pd.DataFrame, quality: pd.DataFrame, seq_len: int) -> alt.FacetChart:
    """Attention + indexer MACs per token at 4T (log x) against the loss ratio to the reference at `seq_len`,
    one panel per content type; dense and DSA drawn as larger marks, error bars from the paired intervals."""
    q = quality[quality["seq_len"] == seq_len][
        ["model", "content_type", "ratio_reference", "ratio_reference_low", "ratio_reference_high"]
    ]
    data = q.merge(
        candidates[["candidate", "family", "attention_macs_4t"]], left_on="model", right_on="candidate", how="inner"
    )
    data["baseline"] = data["model"].isin(BASELINES)
    base = alt.Chart(data).encode(
        x=alt.X("attention_macs_4t:Q", scale=alt.Scale(type="log"), title="attention + indexer MACs / token at 4T"),
        color=alt.Color("family:N"),
    )
    points = base.mark_point(filled=True).encode(
        y=alt.Y("ratio_reference:Q", scale=alt.Scale(zero=False), title="loss / reference (paired)"),
        size=alt.condition("datum.baseline", alt.value(160), alt.value(60)),
        shape=alt.Shape("baseline:N", title="dense / DSA / reference"),
        tooltip=["model", "family", "ratio_reference", "ratio_reference_low", "ratio_reference_high"],
    )
    bars = base.mark_rule().encode(y="ratio_reference_low:Q", y2="ratio_reference_high:Q")
    labels = base.mark_text(dx=8, align="left", fontSize=9).encode(y="ratio_reference:Q", text="model:N")
    return (
        alt.layer(bars, points, labels, data=data)
        .properties(width=220, height=180)
        .facet(facet=alt.Facet("content_type:N", title=None), columns=3)
        .properties(title=f"Cost against loss at T = {seq_len} (lower left is better)")
    )


def overlap_chart(calibration: pd.DataFrame) -> alt.HConcatChart:
    """Layer x layer: mass of row layer's dense attention on column layer's top-k, and |S_i ∩ S_j| / k (pooled)."""
    panels = []
    for stat, title in (
        ("mass_overlap", "mass of layer i's attention on layer j's top-k"),
        ("count_overlap", "|S_i ∩ S_j| / k"),
    ):
        d = calibration[calibration["statistic"] == stat].groupby(["layer", "other"], as_index=False)["value"].mean()
        base = alt.Chart(d, title=title).encode(
            x=alt.X("other:O", title="layer j (selection)"), y=alt.Y("layer:O", title="layer i (attention)")
        )
        heat = base.mark_rect().encode(color=alt.Color("value:Q", scale=alt.Scale(domain=[0, 1]), title=None))
        text = base.mark_text(fontSize=10).encode(text=alt.Text("value:Q", format=".2f"))
        panels.append((heat + text).properties(width=180, height=180))
    return alt.hconcat(*panels)


def decision_chart(decisions: pd.DataFrame) -> alt.Chart:
    """Candidate x layer: what each layer became (colour by kind, text the parameters); tooltip: the evidence."""
    d = decisions.copy()
    d["kind"] = d["decision"].str.split("_").str[0]
    base = alt.Chart(d).encode(x=alt.X("layer:O"), y=alt.Y("candidate:N", title=None))
    heat = base.mark_rect().encode(color=alt.Color("kind:N"), tooltip=["candidate", "layer", "decision", "evidence"])
    text = base.mark_text(fontSize=9).encode(text="decision:N")
    return (heat + text).properties(width=160 * max(1, d["layer"].nunique()) // 2, height=28 * d["candidate"].nunique())
