"""Phase 3's report section, charts and artifact markdown, all from the phase3_* tables.

`phase3_paragraph` says in one paragraph, with the numbers, which designs were cheaper, which were not, and why.
"""

from __future__ import annotations

import html

import pandas as pd

from sparselens.storage import RunStore
from sparselens.viz import phase3_charts as pc
from sparselens.viz.markdown import Summary, markdown_table, records
from sparselens.viz.report import build_report, figure_html, table_html, write_section
from sparselens.viz.save import save_chart

FOLDER = "charts/phase3"
SECTION_KEY = "phase3"
SECTION_ORDER = 50  # after Phase 2 (40)
SECTION_TITLE = "Phase 3: cheaper attention, designed from the measurements and trained"
SHOWN = [
    "candidate",
    "family",
    "macs_vs_dsa_4t",
    "speedup_vs_dsa",
    "speedup_vs_dense",
    "ratio_reference_t",
    "ratio_reference_worst_low_t",
    "ratio_reference_4t",
    "recall_t",
    "task_drop_worst",
    "meets_targets",
]


def phase3_paragraph(candidates: pd.DataFrame, long_ms: str) -> str:
    """One paragraph with the numbers: what was cheaper (by the cost model and the clock), what was not, and why."""
    c = candidates.set_index("candidate")
    designs = c[~c["family"].isin(["dense", "dsa", "reference"])]
    dsa, dense = c.loc["dsa"], c.loc["dense"]
    per_key = (
        f"DSA's whole forward at 4T took {dsa[long_ms]:.1f} ms against dense's {dense[long_ms]:.1f} ms: its indexer "
        f"costs about as much per key as dense attention ({dsa['attention_macs_4t']:.3g} attention + indexer MACs "
        f"per token at 4T against dense's {dense['attention_macs_4t']:.3g})."
    )
    if designs.empty:
        return per_key + " No design was proposed."
    good = designs[designs["ratio_reference_t"] <= 1.01]
    cheaper = designs[(designs["speedup_vs_dsa"] > 1) & (designs["macs_vs_dsa_4t"] > 1)]
    parts = [per_key]
    if not good.empty:
        best = good.sort_values(long_ms).iloc[0]
        parts.append(
            f"The fastest design within 1% of the reference's loss at T was {best.name} ({best['family']}): "
            f"{best['macs_vs_dsa_4t']:.1f}x fewer attention + indexer MACs than DSA at 4T, forward at 4T "
            f"{best[long_ms]:.1f} ms ({best['speedup_vs_dsa']:.2f}x DSA's speed, "
            f"{best['speedup_vs_dense']:.2f}x dense's), loss ratio {best['ratio_reference_t']:.4f} at T and "
            f"{best['ratio_reference_4t']:.4f} at 4T."
        )
    worse = designs[designs["ratio_reference_t"] > 1.01]
    if not worse.empty:
        names = ", ".join(f"{n} ({r:.3f})" for n, r in worse["ratio_reference_t"].items())
        parts.append(f"Cheaper but worse than the 1% loss bound at T: {names}.")
    slow = designs[~designs.index.isin(cheaper.index)]
    if not slow.empty:
        parts.append(f"Not faster than DSA on the clock: {', '.join(slow.index)}.")
    if "task_drop_worst" in designs:
        dropped = designs[designs["task_drop_worst"] > 0.02]["task_drop_worst"]
        names = ", ".join(f"{n} ({100 * d:.1f} points)" for n, d in dropped.items())
        parts.append(f"More than 2 points below the reference's answer accuracy on a task: {names or 'none'}.")
    met = designs[designs["meets_targets"]]
    met_names = ", ".join(met.index) if not met.empty else "none"
    parts.append(f"Meeting every cost, clock, loss and task target: {met_names}.")
    return " ".join(parts)


def _charts(store: RunStore, tables: dict[str, pd.DataFrame], seq_len: int) -> list:
    specs = [
        (
            "cost-loss",
            "Cost against loss per content type",
            pc.cost_loss_chart(tables["phase3_candidates"], tables["phase3_quality"], seq_len),
        ),
        ("overlap", "Layer × layer top-k overlap (calibration)", pc.overlap_chart(tables["phase3_calibration"])),
        ("decisions", "What each layer became, per candidate", pc.decision_chart(tables["phase3_decisions"])),
    ]
    return [save_chart(store, FOLDER, name, title, chart) for name, title, chart in specs]


def write_phase3_report(store: RunStore, seq_len: int, long_length: int) -> tuple[str, pd.DataFrame]:
    """Charts, the report section and report.html; returns the paragraph and the table shown."""
    names = ("phase3_candidates", "phase3_quality", "phase3_calibration", "phase3_decisions")
    tables = {name: store.read_table(name) for name in names}
    cand = tables["phase3_candidates"]
    long_ms = f"forward_ms_{long_length}"
    paragraph = phase3_paragraph(cand, long_ms)
    shown = cand[[c for c in SHOWN + [long_ms] if c in cand.columns]]
    saved = _charts(store, tables, seq_len)
    body = f"<p>{html.escape(paragraph)}</p>" + table_html(shown, 3)
    body += "".join(figure_html(s.spec_json, s.title, s.html) for s in saved)
    write_section(store, SECTION_KEY, SECTION_TITLE, body, SECTION_ORDER)
    build_report(store)
    return paragraph, shown


def phase3_summary(store: RunStore, preset) -> Summary:
    """Write the report section; the markdown summary and the candidates table to publish."""
    paragraph, shown = write_phase3_report(store, preset.train.seq_len, preset.optimize.time_lengths[-1])
    markdown = f"# Phase 3 of run `{store.run_id}`\n\n{paragraph}\n\n{markdown_table(shown, 3)}\n"
    return Summary(
        markdown,
        "Phase 3: candidates against DSA, dense and the reference",
        {"phase3-candidates": records(shown)},
        result=store.path("report.html"),
    )
