"""Phase 2 charts (offline HTML + PNG under `charts/phase2/`), key numbers, and the report section.

Everything is drawn from the `phase2_*` tables; `phase2_key_numbers` gives the small tables that the report
section and the Prefect artifacts share. `sparselens.phase2.run.write_charts` renders `chart_specs` (one Dask task
per chart).
"""

from __future__ import annotations

import html

import pandas as pd

from sparselens.storage import RunStore
from sparselens.viz import phase2_charts as pc
from sparselens.viz.markdown import Summary, markdown_table, records
from sparselens.viz.report import build_report, chart_figure, table_html, write_section

FOLDER = "charts/phase2"
SECTION_KEY = "phase2"
SECTION_ORDER = 40  # after training (10), evaluation (20) and Phase 1 (30)
SECTION_TITLE = "Phase 2: attention patterns, their clusters, content and price"


def reference_length(store: RunStore) -> int:
    """The length most Phase 2 views show: the sparsify length (the training length by default)."""
    return int(store.read_table("phase2_sparsify", columns=["seq_len"])["seq_len"].iloc[0])


# name, title, subtitle ({at} = "T = <reference length>"), builder, table, rows kept ("ref": seq_len == T)
CHARTS = (
    (
        "kind-map",
        "Pattern kind of every head",
        "modal kind over content types; text: share of content types that agree",
        pc.kind_map_chart,
        "phase2_kind_stability",
        None,
    ),
    (
        "head-content",
        "Head × content type: kind and fitted coverage",
        "{at}; text: recall of the fitted pattern",
        pc.head_content_chart,
        "phase2_head_features",
        "ref",
    ),
    (
        "content-kind",
        "Content type × kind: share of heads",
        "{at}; 'all' pools the content types",
        pc.content_kind_chart,
        "phase2_kind_distribution",
        "ref",
    ),
    (
        "pareto",
        "Recall against density, every method",
        "{at}; mean over heads and content types; dense attention of each head (DSA: what it would have been)",
        pc.pareto_chart,
        "phase2_curves",
        None,
    ),
    (
        "clusters",
        "Heads in feature space",
        "PCA of standardised features, all lengths and content types; colour: KMeans (k by silhouette), shape: kind",
        pc.cluster_chart,
        "phase2_clusters",
        "model scope",
    ),
    (
        "sparsify",
        "Sparsify one head: validation-loss change",
        "{at}; each head alone restricted to its fitted pattern (per content type); all content types",
        pc.sparsify_chart,
        "phase2_sparsify",
        "all",
    ),
    (
        "ground-truth",
        "Synthetic tasks: attention on the ground-truth needed keys",
        "{at}; colour: mass on needed keys; text: lift over a uniform row",
        pc.ground_truth_chart,
        "phase2_ground_truth",
        "ref",
    ),
    (
        "pareto-dense",
        "Recall against density per head · dense",
        "{at}; mean over content types",
        pc.pareto_heads_chart,
        "phase2_curves",
        "dense",
    ),
    (
        "pareto-dsa",
        "Recall against density per head · dsa",
        "{at}; dense attention the DSA heads would have had; mean over content types",
        pc.pareto_heads_chart,
        "phase2_curves",
        "dsa",
    ),
    (
        "relevance",
        "What the DSA indexer selects, against chance",
        "{at}; queries t >= k",
        pc.relevance_chart,
        "phase2_relevance",
        "ref",
    ),
)


def _rows(df: pd.DataFrame, keep: str | None, t: int) -> pd.DataFrame:
    if keep == "ref":
        return df[df["seq_len"] == t]
    if keep == "model scope":
        return df[df["scope"] == "model"]
    if keep == "all":
        return df[df["content_type"] == "all"]
    if keep in ("dense", "dsa"):
        return df[df["model"] == keep]
    return df


def chart_specs(store: RunStore) -> list[tuple[str, str, object]]:
    """(name, title, chart) of every Phase 2 chart whose table exists and has rows."""
    t = reference_length(store)
    tables: dict[str, pd.DataFrame] = {}
    specs = []
    for name, title, subtitle, builder, table, keep in CHARTS:
        if table not in tables:
            tables[table] = store.read_table(table) if store.table_exists(table) else pd.DataFrame()
        df = _rows(tables[table], keep, t) if len(tables[table]) else tables[table]
        if len(df):
            specs.append((name, title, builder(df, title, subtitle.format(at=f"T = {t}"))))
    return specs


def _label(df: pd.DataFrame) -> pd.Series:
    return df["model"] + " L" + df["layer"].astype(str) + "·H" + df["head"].astype(str)


def phase2_key_numbers(store: RunStore) -> dict[str, pd.DataFrame]:
    """Small tables for the report and artifacts: kinds, clusters, efficiency, sparsify extremes, ground truth."""
    t = reference_length(store)
    dist = store.read_table("phase2_kind_distribution")
    kinds = (
        dist[(dist["seq_len"] == t) & (dist["content_type"] == "all")]
        .pivot_table(index="model", columns="kind", values="n_heads", fill_value=0, aggfunc="sum")
        .astype("int64")
        .reset_index()
    )
    summary = store.read_table("phase2_cluster_summary")
    clusters = summary.groupby(["model", "scope"], as_index=False)[
        ["kmeans_k", "silhouette", "ari_kmeans", "hdbscan_clusters", "ari_hdbscan"]
    ].mean()
    eff = store.read_table("phase2_efficiency")
    eff = eff.assign(flops_vs_dense=eff["flops_per_query"] / eff["dense_flops_per_query"])
    spread = ["op_recall_halfwidth", "n_samples"] if "op_recall_low" in eff.columns else []  # older runs: one sample
    if spread:
        eff = eff.assign(op_recall_halfwidth=(eff["op_recall_high"] - eff["op_recall_low"]) / 2)
    efficiency = eff.groupby(["model", "method"], as_index=False)[
        ["auc_vs_oracle", "op_density", "op_recall", "op_regret", "flops_vs_dense", *spread]
    ].mean()
    if spread:
        efficiency["n_samples"] = efficiency["n_samples"].round().astype(int)
    sp = store.read_table("phase2_sparsify")
    sp = sp[(sp["content_type"] == "all") & sp["sparsified"]].assign(head_name=lambda d: _label(d))
    cols = ["head_name", "kind", "coverage", "fit_density", "base_loss", "delta_loss"]
    cols += [c for c in ("delta_low", "delta_high", "n_samples") if c in sp.columns]  # spread over samples
    ranked = sp.sort_values("delta_loss", ascending=False)  # heads broad everywhere were not sparsified
    gt = store.read_table("phase2_ground_truth")
    best = gt[(gt["seq_len"] == t) & (gt["rank"] == 1)].assign(head_name=lambda d: _label(d))
    return {
        "kinds": kinds,
        "clusters": clusters,
        "efficiency": efficiency,
        "sparsify_most": ranked.head(3)[cols].reset_index(drop=True),
        "sparsify_least": ranked.tail(3).iloc[::-1][cols].reset_index(drop=True),
        "ground_truth": best[
            ["content_type", "head_name", "kind", "needed_mass", "needed_argmax", "needed_chance", "lift"]
        ].reset_index(drop=True),
    }


def _heads_sentence(df: pd.DataFrame) -> str:
    def delta(r) -> str:
        low, high = getattr(r, "delta_low", float("nan")), getattr(r, "delta_high", float("nan"))
        return f"Δ {r.delta_loss:+.4f}" + ("" if low != low else f" [{low:+.4f}, {high:+.4f}]")

    return ", ".join(f"{r.head_name} ({r.kind}, {delta(r)})" for r in df.itertuples())


def phase2_body(store: RunStore) -> str:
    """HTML of the Phase 2 section: key numbers, the sparsify extremes named, then every chart."""
    numbers = phase2_key_numbers(store)
    t = reference_length(store)
    charts = store.read_table("phase2_charts")
    parts = [
        f'<p class="note">Kinds and features come from the capture tables (maps of dense models are their top-m '
        f"approximation, measured on the last queries of long maps); curves, FLOPs and sparsify-one-head capture "
        f"directly from the models at T = {t}. Recall = mean over queries of the dense attention mass kept; the "
        f"oracle keeps the heaviest entries of the whole map.</p>",
        "<h3>Sparsify one head (Δ loss with its 95% paired-bootstrap interval over the n_samples samples)</h3>",
        f"<p>Costing the most loss: {html.escape(_heads_sentence(numbers['sparsify_most']))}.<br>"
        f"Costing the least: {html.escape(_heads_sentence(numbers['sparsify_least']))}.</p>",
        table_html(numbers["sparsify_most"], 4),
        table_html(numbers["sparsify_least"], 4),
        f"<h3>Kinds at T = {t} (heads × content types)</h3>",
        table_html(numbers["kinds"]),
        "<h3>Clusters against kinds (mean over groups; model scope pools everything)</h3>",
        table_html(numbers["clusters"]),
        "<h3>Efficiency per method (mean over heads and content types; op_recall_halfwidth: mean half-width of each "
        "head's 95% interval over the n_samples maps)</h3>",
        table_html(numbers["efficiency"]),
        "<h3>Synthetic tasks: strongest head per task</h3>",
        table_html(numbers["ground_truth"]),
    ]
    for row in charts.itertuples(index=False):
        parts.append(chart_figure(store, row.html, row.title))
    return "".join(parts)


def write_phase2_report(store: RunStore) -> str:
    """Write the Phase 2 section and rebuild report.html; return the report's path."""
    write_section(store, SECTION_KEY, SECTION_TITLE, phase2_body(store), SECTION_ORDER)
    return build_report(store)


def phase2_summary(store: RunStore, report: str) -> Summary:
    """What Phase 2 publishes: its key numbers, chart paths, and every head's sparsify-one-head loss change."""
    numbers = phase2_key_numbers(store)
    charts = store.read_table("phase2_charts")
    links = "\n".join(f"- {row.title}: `{store.path(row.html)}`" for row in charts.itertuples(index=False))
    sections = [f"## {name.replace('_', ' ')}\n\n{markdown_table(df)}" for name, df in numbers.items()]
    sparsify = store.read_table("phase2_sparsify")
    table = sparsify[sparsify["content_type"] == "all"].sort_values("delta_loss", ascending=False)
    return Summary(
        markdown=f"# Phase 2 of run `{store.run_id}`\n\nReport: `{report}`\n\n"
        + "\n\n".join(sections)
        + f"\n\n## Charts\n\n{links}\n",
        description="pattern kinds, clusters, efficiency against the oracle, sparsify-one-head extremes",
        tables={"phase2-sparsify": records(table.drop(columns=["run_id"]), 5)},
        result=report,
    )
