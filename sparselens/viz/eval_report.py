"""The first two sections of report.html (training, evaluation), the evaluate phase's published summary, and the
short text `sparselens run` ends with: one source for the headline numbers and how they are worded.

Every headline number carries its 95% interval and its n: loss and recall over validation samples (t-interval),
the DSA/dense loss ratio as a paired bootstrap over the same samples, task answer accuracy as a Wilson interval over
answer positions (from `eval_tasks`, when the run has it).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from sparselens.evaluation import read_task_accuracy
from sparselens.storage import RunStore
from sparselens.viz.markdown import Summary, markdown_table, records
from sparselens.viz.report import build_report, figure_html, table_html, write_section
from sparselens.viz.save import FONT

TRAIN_KEY, TRAIN_ORDER = "training", 10
EVAL_KEY, EVAL_ORDER = "evaluation", 20
INTERVALS_NOTE = (
    "Intervals are 95%: loss and recall over validation samples (t-interval of the per-sample means; the queries of "
    "one sample are not independent, so samples are the unit), the DSA/dense ratio a paired bootstrap over the same "
    "samples under both models, task accuracy Wilson's interval over answer positions (positions of one sample are "
    "correlated, so read it as a floor on the uncertainty). n = samples (answer positions for accuracy)."
)


def ci(value: float, low: float, high: float, digits: int = 3) -> str:
    """`1.012 [1.004, 1.019]`; the bracket is left out where the interval is undefined (n < 2)."""
    if value != value:
        return "n/a"
    if low != low or high != high:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def headline(summary: pd.DataFrame, seq_len: int | None = None) -> pd.DataFrame:
    """eval_summary rows (of one length when given) as text cells: loss of each model, ratio, recall, oracle."""
    rows = summary if seq_len is None else summary[summary["seq_len"] == seq_len]
    return pd.DataFrame(
        {
            "content type": rows["content_type"],
            "length": rows["seq_len"],
            "dense loss": [ci(*v) for v in rows[["dense_loss", "dense_low", "dense_high"]].to_numpy()],
            "DSA loss": [ci(*v) for v in rows[["dsa_loss", "dsa_low", "dsa_high"]].to_numpy()],
            "DSA / dense": [ci(*v, digits=4) for v in rows[["ratio", "ratio_low", "ratio_high"]].to_numpy()],
            "n": rows["n_samples"],
            "recall": [ci(*v) for v in rows[["recall", "recall_low", "recall_high"]].to_numpy()],
            "oracle": [ci(*v) for v in rows[["oracle_recall", "oracle_low", "oracle_high"]].to_numpy()],
            "n recall": rows["n_recall_samples"],
        }
    )


def task_table(tasks: pd.DataFrame | None, seq_len: int | None = None) -> pd.DataFrame | None:
    """Answer accuracy per task and length, one column per model, as `acc [low, high]` cells with n answers."""
    if tasks is None or tasks.empty:
        return None
    rows = tasks if seq_len is None else tasks[tasks["seq_len"] == seq_len]
    cells = rows.assign(cell=[ci(*v) for v in rows[["accuracy", "low", "high"]].to_numpy()])
    wide = cells.pivot_table(index=["content_type", "seq_len"], columns="model", values="cell", aggfunc="first")
    n = cells.groupby(["content_type", "seq_len"])["n"].max()
    return wide.assign(n=n).reset_index().rename(columns={"content_type": "task", "seq_len": "length"})


SERIES = {  # train_log stage -> what its LM-loss curve is, in legend order
    "pretrain": "dense pre-training (shared)",
    "dense_continue": "dense baseline (continued)",
    "warmup": "DSA warm-up (main model frozen)",
    "sparse": "DSA sparse stage",
}
SERIES_COLORS = ["#7f7f7f", "#1f77b4", "#ffbb78", "#d62728"]


def loss_curves_chart(log: pd.DataFrame) -> alt.VConcatChart:
    """LM loss per logged step of every stage (dense: pretrain then dense_continue; DSA: warmup then sparse), and
    the indexer KL of the DSA stages (log scale)."""
    lm = log.dropna(subset=["lm_loss"]).assign(series=lambda d: d["stage"].map(SERIES).fillna(d["stage"]))
    color = alt.Color(
        "series:N", scale=alt.Scale(domain=list(SERIES.values()), range=SERIES_COLORS), title=None,
        legend=alt.Legend(orient="top", columns=2),
    )  # fmt: skip
    tooltip = ["model", "stage", "step", alt.Tooltip("lm_loss:Q", format=".4f"), alt.Tooltip("lr:Q", format=".2e")]
    curves = (
        alt.Chart(lm)
        .mark_line(point=alt.OverlayMarkDef(size=10), strokeWidth=1.5)
        .encode(
            x=alt.X("step:Q", title="global step"),
            y=alt.Y("lm_loss:Q", title="LM loss on the step's batch (nats / byte)", scale=alt.Scale(zero=False)),
            color=color,
            tooltip=tooltip,
        )
        .properties(width=760, height=240, title="Training loss (every logged step; both models see the same batches)")
    )
    kl = log.dropna(subset=["kl_loss"]).assign(series=lambda d: d["stage"].map(SERIES).fillna(d["stage"]))
    if kl.empty:
        return alt.vconcat(curves)
    kl_chart = (
        alt.Chart(kl)
        .mark_line(point=alt.OverlayMarkDef(size=10), strokeWidth=1.5)
        .encode(
            x=alt.X("step:Q", title="global step"),
            y=alt.Y("kl_loss:Q", title="indexer KL (nats)", scale=alt.Scale(type="log"), axis=alt.Axis(tickCount=4)),
            color=alt.Color(
                "series:N", scale=alt.Scale(domain=list(SERIES.values()), range=SERIES_COLORS), legend=None
            ),
            tooltip=["stage", "step", alt.Tooltip("kl_loss:Q", format=".4f")],
        )
        .properties(width=760, height=140, title="Indexer KL to the dense attention (DSA stages)")
    )
    return alt.vconcat(curves, kl_chart)


def ratio_chart(summary: pd.DataFrame) -> alt.LayerChart:
    """DSA/dense loss ratio with its paired-bootstrap interval, per content type and length."""
    base = alt.Chart(summary).encode(
        y=alt.Y("content_type:N", title=None),
        yOffset=alt.YOffset("seq_len:N"),
        color=alt.Color("seq_len:N", title="length"),
    )
    bars = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ratio_low:Q", title="DSA loss / dense loss"), x2="ratio_high:Q"
    )
    points = base.mark_point(filled=True, size=50).encode(
        x=alt.X("ratio:Q", scale=alt.Scale(zero=False)),
        tooltip=[
            "content_type",
            "seq_len",
            alt.Tooltip("ratio:Q", format=".4f"),
            "ratio_low",
            "ratio_high",
            "n_samples",
        ],
    )
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(color="#999", strokeDash=[4, 4]).encode(x="x:Q")
    return alt.layer(one, bars, points).properties(width=560, height=240, title="Loss ratio (95% paired bootstrap)")


def recall_chart(recall: pd.DataFrame) -> alt.FacetChart:
    """Indexer recall per layer and length with its interval over samples, beside the oracle, per content type."""
    df = recall.copy()
    base = alt.Chart(df).encode(
        x=alt.X("layer:O", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("seq_len:N"),
        color=alt.Color("seq_len:N", title="length"),
    )
    bars = base.mark_rule(strokeWidth=2).encode(
        y=alt.Y("recall_low:Q", title="recall", scale=alt.Scale(zero=False)), y2="recall_high:Q"
    )
    points = base.mark_point(filled=True).encode(
        y="recall:Q",
        tooltip=[
            "content_type",
            "seq_len",
            "layer",
            alt.Tooltip("recall:Q", format=".3f"),
            "oracle_recall",
            "n_samples",
        ],
    )
    oracle = base.mark_tick(color="#444", thickness=2).encode(y="oracle_recall:Q")
    return (
        alt.layer(bars, points, oracle, data=df)
        .properties(width=170, height=140)
        .facet(facet=alt.Facet("content_type:N", title=None), columns=5)
        .properties(title="Indexer recall per layer (dot, 95% interval over samples) and the oracle (tick)")
    )


def _chart_spec(chart) -> str:
    return chart.configure(font=FONT).to_json()


def training_body(store: RunStore) -> str:
    """Loss curves from train_log and the last logged row of every stage."""
    log = store.read_table("train_log")
    last = log.groupby(["model", "stage"], sort=False).tail(1)
    first = log.groupby(["model", "stage"], sort=False).head(1).set_index(["model", "stage"])["lm_loss"]
    table = last.assign(first_lm_loss=[first[(m, s)] for m, s in zip(last["model"], last["stage"], strict=True)])
    cols = ["model", "stage", "step", "first_lm_loss", "lm_loss", "kl_loss", "wall_s"]
    return (
        '<p class="note">From <code>tables/train_log</code>. The dense baseline (pretrain, then dense_continue) trains '
        "as many steps as the DSA model (pretrain, then the indexer warm-up and the sparse stage).</p>"
        + figure_html(_chart_spec(loss_curves_chart(log)), "LM loss and indexer KL per logged step")
        + table_html(table[cols], 4)
    )


def evaluation_body(store: RunStore, train_seq_len: int, topk: int) -> str:
    """The headline table at T, the same at every length, task accuracy, and the ratio and recall charts."""
    summary = store.read_table("eval_summary")
    tasks = task_table(read_task_accuracy(store))
    parts = [
        f"<p>Held-out loss of the equal-step dense baseline and the DSA model (k = {topk}) at the training length "
        f"T = {train_seq_len}, their ratio, and indexer recall (dense attention mass on the selected keys, queries "
        f"t &ge; k, mean over layers) against the oracle (each query's own best k keys).</p>",
        table_html(headline(summary, train_seq_len)),
        f'<p class="note">{INTERVALS_NOTE}</p>',
    ]
    if tasks is not None:
        parts += ["<h3>Synthetic tasks: answer accuracy (Wilson 95%)</h3>", table_html(tasks)]
    else:
        parts.append('<p class="note">No <code>eval_tasks</code> table in this run: task accuracy not measured.</p>')
    parts += [
        "<h3>Every length</h3>",
        table_html(headline(summary)),
        figure_html(_chart_spec(ratio_chart(summary)), "DSA / dense loss ratio per content type and length"),
        figure_html(_chart_spec(recall_chart(store.read_table("indexer_recall"))), "Indexer recall per layer"),
        '<p class="note">Tables: <code>eval_summary</code> (these rows), <code>eval_loss</code>, '
        "<code>indexer_recall</code> (per layer), <code>eval_loss_samples</code> and "
        "<code>indexer_recall_samples</code> (per sample), <code>eval_tasks</code>.</p>",
    ]
    return "".join(parts)


def write_run_sections(store: RunStore, train_seq_len: int, topk: int) -> str:
    """Write the training and evaluation sections and rebuild report.html; return its path."""
    if store.table_exists("train_log"):
        write_section(store, TRAIN_KEY, "Training", training_body(store), TRAIN_ORDER)
    write_section(store, EVAL_KEY, "Evaluation", evaluation_body(store, train_seq_len, topk), EVAL_ORDER)
    return build_report(store)


def evaluation_summary(store: RunStore, train_seq_len: int, topk: int, report: str) -> Summary:
    """What the evaluate phase publishes: the headline table at T, task accuracy, recall per length and layer."""
    summary = store.read_table("eval_summary")
    table = headline(summary, train_seq_len)
    tasks = task_table(read_task_accuracy(store), train_seq_len)
    recall = store.read_table("indexer_recall")
    per_layer = recall.groupby(["seq_len", "layer"])[["recall", "oracle_recall"]].mean().reset_index()
    task_md = "" if tasks is None else f"Answer accuracy (Wilson 95%, n answers):\n\n{markdown_table(tasks)}\n\n"
    at_t = summary[summary["seq_len"] == train_seq_len]
    return Summary(
        markdown=(
            f"# Evaluation of run `{store.run_id}`\n\nAt the training length T = {train_seq_len}, k = {topk}:\n\n"
            f"{markdown_table(table)}\n\n{INTERVALS_NOTE}\n\n{task_md}"
            f"Indexer recall per length and layer (mean over content types):\n\n{markdown_table(per_layer)}\n\n"
            f"Report: `{report}`\n"
        ),
        description="DSA vs equal-step dense loss with intervals, task accuracy, indexer recall",
        tables={"eval-summary": records(at_t.drop(columns=["run_id"]), 5)},
        result={"ratio_max": float(at_t["ratio"].max()), "report": report},
    )


def run_summary_text(store: RunStore, train_seq_len: int, report: str | None) -> str:
    """The lines `sparselens run` ends with: loss ratios with intervals, recall against the oracle, task accuracy
    and where the report and tables are."""
    lines = []
    if store.table_exists("eval_summary"):
        at_t = store.read_table("eval_summary")
        at_t = at_t[at_t["seq_len"] == train_seq_len]
        lines.append(f"DSA / dense loss at T = {train_seq_len} (95% paired bootstrap, n samples):")
        width = max(len(c) for c in at_t["content_type"])
        for row in at_t.itertuples(index=False):
            ratio, recall = (
                ci(row.ratio, row.ratio_low, row.ratio_high, 3),
                ci(row.recall, row.recall_low, row.recall_high, 2),
            )
            lines.append(
                f"  {row.content_type:<{width}}  {ratio:<24} n={row.n_samples:<3}"
                f"  recall {recall} vs oracle {row.oracle_recall:.2f}"
            )
    tasks = read_task_accuracy(store)
    if tasks is not None and not tasks.empty:
        lines.append(f"Task answer accuracy at T = {train_seq_len} (Wilson 95%):")
        for (task, model), row in (
            tasks[tasks["seq_len"] == train_seq_len].set_index(["content_type", "model"]).iterrows()
        ):
            lines.append(f"  {task:<13} {model:<6} {ci(row.accuracy, row.low, row.high, 3)}  n={int(row.n)}")
    elif store.table_exists("eval_summary"):
        lines.append("Task answer accuracy: not measured in this run (no eval_tasks table).")
    if report:
        lines.append(f"Report: {report}")
    lines.append(f"Tables: {store.path('tables')}")
    return "\n".join(lines)
