"""The Phase 1 section of the run's report.html: key numbers, then every Phase 1 chart (PNG, linked to HTML)."""

from __future__ import annotations

import html
import posixpath

from sparselens.interpret.run import key_numbers
from sparselens.storage import RunStore
from sparselens.viz.markdown import Summary, markdown_table, records
from sparselens.viz.report import build_report, chart_figure, table_html, write_section

SECTION_KEY = "phase1"
SECTION_ORDER = 30  # after training (10) and evaluation (20), before Phase 2 (40)
GROUPS = (
    ("Dense vs DSA attention maps", ("maps-", "profiles-")),
    ("Token selection", ("tokens-",)),
    ("Entropy", ("entropy",)),
    ("Indexer heads", ("indexer-",)),
    ("Scaling with length", ("scaling-",)),
)


def phase1_body(store: RunStore) -> str:
    """HTML of the Phase 1 section, from the phase1_* tables and the saved chart PNGs."""
    numbers = key_numbers(store)
    recall = store.read_table("phase1_recall_length")
    charts = store.read_table("phase1_charts")
    parts = [
        '<p class="note">Everything here is drawn from the capture tables (query_stats, attention_topk, '
        "indexer_stats, selections) and the phase1_* tables of this run. Recall is the dense attention mass "
        "(summed over heads, normalised) on the indexer's k keys, averaged over queries t &gt;= k.</p>",
        "<h3>Key numbers per layer (all content types)</h3>",
        table_html(numbers),
        "<h3>Where recall falls below the threshold</h3>",
        table_html(recall[["content_type", "layer", "first_below", "crossing_len", "status"]]),
    ]
    for heading, prefixes in GROUPS:
        rows = charts[charts["name"].str.startswith(prefixes)]
        if rows.empty:
            continue
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        for row in rows.itertuples(index=False):
            parts.append(chart_figure(store, row.html, row.title))  # paths relative to report
    return "".join(parts)


def write_phase1_report(store: RunStore) -> str:
    """Write the Phase 1 section and rebuild report.html; return the report's path."""
    write_section(
        store, SECTION_KEY, "Phase 1: what sparse attention and its indexer look at", phase1_body(store), SECTION_ORDER
    )
    return build_report(store)


def run_url(store: RunStore, relpath: str) -> str:
    """A URL of a file under the run directory (file:// on local disk)."""
    return f"{store.url.rstrip('/')}/{relpath}"


def phase1_summary(store: RunStore, charts: list[dict], report: str) -> Summary:
    """What Phase 1 publishes: key numbers per layer, where recall falls, links to every chart and the report."""
    numbers = key_numbers(store)
    recall = store.read_table("phase1_recall_length")
    pooled = recall[recall["content_type"] == "all"][["layer", "first_below", "crossing_len", "status"]]
    links = "\n".join(
        f"- [{c['title']}]({run_url(store, c['html'])}) ([png]({run_url(store, c['png'])}))" for c in charts
    )
    scaling = store.read_table("phase1_scaling")
    pooled_scaling = scaling[scaling["content_type"] == "all"].drop(columns=["run_id"])
    return Summary(
        markdown=(
            f"# Phase 1 of run `{store.run_id}`\n\n## Key numbers per layer\n\n{markdown_table(numbers, 3)}\n\n"
            f"## Where indexer recall falls below the threshold\n\n{markdown_table(pooled, 1)}\n\n"
            f"## Charts\n\n{links}\n\n"
            f"Report: [{posixpath.basename(report)}]({run_url(store, 'report.html')})\n"
        ),
        description="Phase 1 key numbers and chart links",
        tables={"phase1-key-numbers": records(numbers), "phase1-scaling": records(pooled_scaling)},
        links={"report": (run_url(store, "report.html"), f"report.html of run {store.run_id}")},
        result=report,
    )
