"""Phase 4's charts (`charts/phase4/`), its section of report.html, and the summary the artifacts publish.

Everything is drawn from `phase4_benchmark`, `champion.json` and `benchmark/environment.json`.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from sparselens.benchmark.run import read_environment
from sparselens.benchmark.table import TABLE
from sparselens.storage import RunStore
from sparselens.storage.store import CHAMPION_FILE
from sparselens.viz import phase4_charts as charts
from sparselens.viz.markdown import markdown_table
from sparselens.viz.report import build_report, figure_html, table_html, write_section
from sparselens.viz.save import SavedChart, save_chart

FOLDER = "charts/phase4"
SECTION_KEY = "phase4"
SECTION_ORDER = 60  # after Phase 3 (50)
SECTION_TITLE = "Phase 4: every design side by side, and the champion"


def _metric(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[df["metric"] == metric]


def mean_loss(df: pd.DataFrame, seq_len: int) -> pd.Series:
    """Mean over content types of each model's held-out loss at seq_len."""
    rows = _metric(df, "loss")
    return rows[rows["seq_len"] == seq_len].groupby("model")["value"].mean()


def pareto_points(df: pd.DataFrame, metric: str, length: int) -> pd.DataFrame:
    """model, family, ms (median), ms_low, ms_high (IQR), loss (mean at T) and front (not dominated) per model."""
    t = int(_metric(df, "loss")["seq_len"].min())
    rows = _metric(df, metric)
    rows = rows[rows["seq_len"] == length].set_index("model")
    points = pd.DataFrame(
        {"family": rows["family"], "ms": rows["value"], "ms_low": rows["low"], "ms_high": rows["high"]}
    ).join(mean_loss(df, t).rename("loss"), how="inner")
    points["front"] = [
        not (
            (points["ms"] <= p.ms) & (points["loss"] <= p.loss) & ((points["ms"] < p.ms) | (points["loss"] < p.loss))
        ).any()
        for p in points.itertuples()
    ]
    return points.reset_index(names="model")


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, timed metric and length: its median ms, dense's, and dense / model (> 1 = faster than dense)."""
    rows = df[df["metric"].isin(["prefill_ms", "decode_ms_per_token"])][["model", "metric", "seq_len", "value"]]
    dense = rows[rows["model"] == "dense"].rename(columns={"value": "dense_ms"}).drop(columns="model")
    out = rows.merge(dense, on=["metric", "seq_len"]).rename(columns={"value": "ms"})
    return out.assign(speedup=out["dense_ms"] / out["ms"]).sort_values(["metric", "seq_len", "model"])


def summary_table(df: pd.DataFrame, champion: dict | None = None) -> pd.DataFrame:
    """One row per model: loss against DSA (mean ratio and worst upper bound per length), retrieval, timings, memory."""
    models = list(dict.fromkeys(df["model"]))
    out = pd.DataFrame(index=pd.Index(models, name="model"))
    out["family"] = df.drop_duplicates("model").set_index("model")["family"]
    ratio = _metric(df, "loss_ratio_vs_dsa")
    for t, group in ratio.groupby("seq_len"):
        out[f"loss/dsa@{t}"] = group.groupby("model")["value"].mean()
        out[f"worst_high@{t}"] = group.groupby("model")["high"].max()
    out["retrieval"] = _metric(df, "retrieval_accuracy").groupby("model")["value"].mean()
    out["retrieval_nats"] = _metric(df, "retrieval_answer_loss").groupby("model")["value"].mean()
    for metric, label in (("prefill_ms", "prefill_ms"), ("decode_ms_per_token", "decode_ms")):
        for t, group in _metric(df, metric).groupby("seq_len"):
            out[f"{label}@{t}"] = group.set_index("model")["value"]
    for metric, label in (("cache_bytes_per_token", "cache_B/token"), ("peak_rss_mb", "peak_rss_mb")):
        out[label] = _metric(df, metric).groupby("model")["value"].max()
    out["decode_err"] = _metric(df, "decode_error_ratio").groupby("model")["value"].max()
    if champion:
        out["eligible"] = [champion["eligible"].get(m, "") if m != "dense" else "" for m in models]
        out["champion"] = ["*" if m == champion["champion"] else "" for m in models]
    return out.reset_index()


def read_champion(store: RunStore) -> dict | None:
    """champion.json, or None before the rule has run."""
    try:
        return json.loads(store.read_text(CHAMPION_FILE))
    except FileNotFoundError:
        return None


def draw_phase4_charts(store: RunStore, df: pd.DataFrame, scale: float = 1.5) -> list[SavedChart]:
    """Save the Pareto charts (prefill at the longest length, decode at the longest context), the retrieval grid
    and decode ms against context."""
    longest = int(_metric(df, "prefill_ms")["seq_len"].max())
    context = int(_metric(df, "decode_ms_per_token")["seq_len"].max())
    t = int(_metric(df, "loss")["seq_len"].min())
    grid = _metric(df, "retrieval_accuracy")[["model", "seq_len", "depth", "value", "n"]]
    answer_loss = _metric(df, "retrieval_answer_loss")[["model", "seq_len", "depth", "value", "n"]]
    decode = _metric(df, "decode_ms_per_token")[["model", "family", "seq_len", "value", "low", "high"]]
    prefill_points = pareto_points(df, "prefill_ms", longest)
    decode_points = pareto_points(df, "decode_ms_per_token", context)
    specs = [
        ("pareto-prefill", "Loss against prefill time", charts.pareto_chart(
            prefill_points, f"prefill ms at {longest}", "Loss against prefill time",
            f"prefill of {longest} tokens (median, IQR); mean loss over content types at T = {t}")),
        ("pareto-decode", "Loss against decode time", charts.pareto_chart(
            decode_points, f"decode ms/token at {context}", "Loss against decode time",
            f"decode at {context} tokens of context (median, IQR); mean loss at T = {t}")),
        ("retrieval", "Needle retrieval", charts.retrieval_chart(
            grid, "Needle retrieval", "associative recall: both value digits right, per context and needle depth")),
        ("retrieval-loss", "Needle retrieval: loss on the answer", charts.retrieval_chart(
            answer_loss, "Needle retrieval: loss on the answer", "mean nats on the two value digits", loss=True)),
        ("decode", "Decode time against context", charts.decode_chart(
            decode, "Decode time against context", "median ms per token, IQR band; caches past one chunk stitched")),
    ]  # fmt: skip
    return [save_chart(store, FOLDER, name, title, chart, scale) for name, title, chart in specs]


def markdown_summary(store: RunStore) -> str:
    """The artifact's markdown: champion and why, the host, the summary table and the speed-ups against dense."""
    df = store.read_table(TABLE)
    champion, env = read_champion(store), read_environment(store)
    ups = speedups(df)
    lines = [f"# Phase 4 of run `{store.run_id}`", ""]
    if champion:
        lines += [f"**Champion: `{champion['champion']}`** ({champion['version']}): {champion['reason']}.", ""]
    lines += [
        f"Host: {env['cpu_model']}, {env['cores']} cores, {env['threads']} torch threads, torch "
        f"{env['torch_version']}, kernels {env['kernel_backend']}; seconds per part: {env['seconds']}.",
        "",
        markdown_table(summary_table(df, champion), 3),
        "",
        "## Speed against dense (dense ms / model ms; > 1 is faster)",
        "",
        markdown_table(ups[ups["model"] != "dense"], 3),
    ]
    return "\n".join(lines) + "\n"


def phase4_body(store: RunStore, saved: list[SavedChart]) -> str:
    """HTML of the Phase 4 section."""
    df = store.read_table(TABLE)
    champion, env = read_champion(store), read_environment(store)
    parts = [
        '<p class="note">Quality: held-out loss per content type at T, 2T, 4T on the same validation samples for '
        "every model; intervals of differences and ratios are paired bootstraps over those samples. Timings: one "
        f"process, models interleaved, warm-up excluded; {html.escape(str(env['cpu_model']))}, {env['cores']} "
        f"cores, {env['threads']} torch threads, torch {html.escape(str(env['torch_version']))}. Decode caches "
        "beyond one chunk are stitched from separate prefills (timing only). Cache bytes and FLOPs are analytic; "
        "peak RSS is measured in a fresh process per model.</p>",
    ]
    if champion:
        parts.append(
            f"<p><b>Champion: {html.escape(champion['champion'])}</b> ({html.escape(champion['version'])}): "
            f"{html.escape(champion['reason'])}.</p><p class='note'>{html.escape(champion['rule'])}</p>"
        )
    parts += ["<h3>Every model</h3>", table_html(summary_table(df, champion), 3)]
    ups = speedups(df)
    parts += ["<h3>Speed against dense (dense ms / model ms)</h3>", table_html(ups[ups["model"] != "dense"], 3)]
    parts += [figure_html(c.spec_json, c.title, c.html) for c in saved]
    return "".join(parts)


def write_phase4_report(store: RunStore, scale: float = 1.5) -> str:
    """Draw the charts, write the Phase 4 section and rebuild report.html; return the report's path."""
    saved = draw_phase4_charts(store, store.read_table(TABLE), scale)
    write_section(store, SECTION_KEY, SECTION_TITLE, phase4_body(store, saved), SECTION_ORDER)
    return build_report(store)
