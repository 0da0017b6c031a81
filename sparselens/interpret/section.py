"""The Phase 1 section of the run's report.html: key numbers, then every Phase 1 chart (PNG, linked to HTML)."""

from __future__ import annotations

import html

from sparselens.interpret.run import key_numbers
from sparselens.storage import RunStore
from sparselens.viz.report import build_report, figure_html, table_html, write_section

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
            parts.append(figure_html(store.read_bytes(row.png), row.title, row.html))  # paths relative to report
    return "".join(parts)


def write_phase1_report(store: RunStore) -> str:
    """Write the Phase 1 section and rebuild report.html; return the report's path."""
    write_section(
        store, SECTION_KEY, "Phase 1: what sparse attention and its indexer look at", phase1_body(store), SECTION_ORDER
    )
    return build_report(store)
