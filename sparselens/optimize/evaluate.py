"""Phase 3's evaluation step: dense, DSA, the reference, the oracle top-k and every candidate, side by side.

Writes `phase3_quality` (loss per model, content type and length with intervals and paired ratios),
`phase3_costs` (the analytic cost model at T, 4T, 8192 and 32K), `phase3_timing` (whole-model forward at the
`time_lengths` and attention + indexer time at `core_length`, interleaved, medians) and `phase3_candidates` (one
row per model: family, plan, costs, losses, answer accuracy per synthetic task, times, recall and whether it meets
the issue's targets).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sparselens.analysis.cost import cache_bytes_per_token, cost_table, token_costs
from sparselens.config import Preset
from sparselens.data.dataset import CONTENT_TYPES, stack_tokens, validation_samples
from sparselens.data.synthetic import TASKS
from sparselens.optimize.candidates import all_indexer_plan
from sparselens.optimize.finetune import REFERENCE
from sparselens.optimize.measure import all_losses, dense_mass_recall, interleaved_times, quality_table
from sparselens.optimize.phase3 import read_designs
from sparselens.stats import median_iqr
from sparselens.task_accuracy import task_accuracy
from sparselens.threads import torch_threads

COST_LENGTHS_EXTRA = (8192, 32768)
BASELINES = ("dense", "dsa", REFERENCE, "oracle")
TASK_POINTS = 0.02  # a candidate's answer accuracy may fall at most this far below the reference's, on every task


@torch.no_grad()
def mean_selected(model, preset: Preset, n: int) -> dict[int, float]:
    """Measured mean keys per query (t >= the layer's k) of every adaptive layer, on validation samples at T."""
    layers = [i for i, b in enumerate(model.blocks) if b.indexer is not None and b.indexer.plan.top_p is not None]
    if not layers:
        return {}
    from sparselens.models import capture

    sums = dict.fromkeys(layers, 0.0)
    for ct in CONTENT_TYPES:
        tokens = stack_tokens(validation_samples(ct, preset.train.seq_len, n))[:, :-1]
        c = capture(model, tokens, [f"blocks.{i}.attn.hook_selection" for i in layers])
        for i in layers:
            idx = c[f"blocks.{i}.attn.hook_selection"]
            sums[i] += (idx >= 0).sum(-1)[:, idx.shape[-1] :].float().mean().item() / len(CONTENT_TYPES)
    return sums


def _recall(model, preset: Preset, n: int) -> float:
    """Dense-mass recall of the selections, mean over sparse layers and content types, at T (NaN for dense)."""
    if not any(b.attn.plan.sparse for b in model.blocks):
        return float("nan")
    per_type = []
    for ct in CONTENT_TYPES:
        tokens = stack_tokens(validation_samples(ct, preset.train.seq_len, n))[:, :-1]
        per_type.append(np.mean(list(dense_mass_recall(model, tokens).values())))
    return float(np.mean(per_type))


def timing_table(models: dict, preset: Preset) -> pd.DataFrame:
    """Interleaved medians: whole forward at each of optimize.time_lengths, attention + indexer at core_length."""
    opt, rows = preset.optimize, []
    runs = [("forward", t, False) for t in opt.time_lengths] + [("attention_core", opt.core_length, True)]
    with torch_threads(preset.benchmark.threads):
        for what, length, attention_only in runs:
            times = interleaved_times(models, length, opt.timing_repeats, attention_only)
            for name, ms in times.items():
                rows.append({"model": name, "what": what, "length": length, **median_iqr(np.array(ms))})
    return pd.DataFrame(rows).assign(threads=torch.get_num_threads())


def evaluate(store, preset: Preset) -> dict[str, pd.DataFrame]:
    """Measure every model; writes and returns phase3_quality, phase3_costs, phase3_timing, phase3_candidates."""
    opt, designs = preset.optimize, read_designs(store)
    names = ["dense", "dsa", REFERENCE] + [d.name for d in designs]
    models = {name: store.load_model(name) for name in names}
    losses = all_losses(models | {"oracle": models[REFERENCE]}, preset, opt.eval_samples, modes={"oracle": "oracle"})
    quality = quality_table(losses, against=("reference", "dsa", "dense")).assign(run_id=store.run_id)
    mean_k = {name: mean_selected(m, preset, opt.eval_samples) for name, m in models.items()}
    t = preset.train.seq_len
    costs = cost_table({n: m.cfg for n, m in models.items()}, (t, 4 * t, *COST_LENGTHS_EXTRA), mean_k)
    timing = timing_table(models, preset)
    recall = {name: _recall(m, preset, min(4, opt.eval_samples)) for name, m in models.items()}
    tasks = {name: task_accuracies(m, preset) for name, m in models.items()}
    summary = candidates_table(store, preset, models, quality, timing, recall, mean_k, tasks)
    tables = {
        "phase3_quality": quality,
        "phase3_costs": costs.assign(run_id=store.run_id),
        "phase3_timing": timing.assign(run_id=store.run_id),
        "phase3_candidates": summary,
    }
    for name, table in tables.items():
        store.write_table(name, table)
    return tables


def task_accuracies(model, preset: Preset) -> dict[str, float]:
    """Answer accuracy per synthetic task at T on optimize.eval_samples held-out samples (the same for every model)."""
    t, n = preset.train.seq_len, preset.optimize.eval_samples
    return {task: task_accuracy(model, task, t, n, preset.eval.batch_size)["accuracy"] for task in TASKS}


def _family_and_plan(store, models: dict) -> dict[str, tuple[str, str, str]]:
    """model -> (family, plan JSON, rationale)."""
    out = {
        "dense": ("dense", "", "the equal-step dense baseline"),
        "dsa": ("dsa", all_indexer_plan(models["dsa"].cfg).to_json(), "the run's DSA model"),
        REFERENCE: ("reference", all_indexer_plan(models["dsa"].cfg).to_json(), "DSA continued for the same steps"),
    }
    for d in read_designs(store):
        out[d.name] = (d.family, d.plan.to_json(), d.rationale)
    return out


def candidates_table(store, preset: Preset, models, quality, timing, recall, mean_k, tasks) -> pd.DataFrame:
    """One row per model: what it is, its analytic costs, losses against the reference, answer accuracy per task
    (`task_<name>`) and its worst drop below the reference's (`task_drop_worst`), times, recall, targets."""
    t, rows = preset.train.seq_len, []
    meta = _family_and_plan(store, models)
    med = timing.set_index(["model", "what", "length"])["median"]
    long = 4 * t
    for name, model in models.items():
        c_t, c_4t = token_costs(model.cfg, t, mean_k=mean_k[name]), token_costs(model.cfg, long, mean_k=mean_k[name])
        q = quality[(quality["model"] == name) & (quality["seq_len"] == t)]
        q4 = quality[(quality["model"] == name) & (quality["seq_len"] == long)]
        family, plan, why = meta[name]
        row = {"run_id": store.run_id, "candidate": name, "family": family, "plan": plan, "rationale": why}
        row |= {"attention_macs_t": c_t["attention"], "attention_macs_4t": c_4t["attention"]}
        row |= {"total_macs_4t": c_4t["total"], "cache_bytes_per_token": cache_bytes_per_token(model.cfg)["total"]}
        row |= {"loss_t": q["loss"].mean(), "loss_4t": q4["loss"].mean()}
        row |= {"ratio_reference_t": q["ratio_reference"].mean()}
        row |= {"ratio_reference_worst_low_t": q["ratio_reference_low"].max()}
        row |= {"ratio_reference_4t": q4["ratio_reference"].mean(), "recall_t": recall[name]}
        row |= {f"task_{task}": acc for task, acc in tasks[name].items()}
        row["task_drop_worst"] = max(tasks[REFERENCE][task] - acc for task, acc in tasks[name].items())
        for length in preset.optimize.time_lengths:
            row[f"forward_ms_{length}"] = med.get((name, "forward", length), np.nan)
        row["attention_ms_core"] = med.get((name, "attention_core", preset.optimize.core_length), np.nan)
        rows.append(row)
    out = pd.DataFrame(rows)
    return add_targets(out, preset)


def add_targets(table: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Columns of issue 13's acceptance per candidate: >= 2x fewer attention MACs than DSA at 4T, forward at 4T
    >= 1.25x faster than DSA's and faster than dense's, mean loss ratio to the reference <= 1.01 with every content
    type's interval reaching 1.02 or below, and answer accuracy on every synthetic task at most TASK_POINTS below
    the reference's."""
    t = table.set_index("candidate")
    long = preset.optimize.time_lengths[-1]
    fwd = f"forward_ms_{long}"
    out = table.copy()
    out["macs_vs_dsa_4t"] = t.loc["dsa", "attention_macs_4t"] / out["attention_macs_4t"]
    out["speedup_vs_dsa"] = t.loc["dsa", fwd] / out[fwd]
    out["speedup_vs_dense"] = t.loc["dense", fwd] / out[fwd]
    out["meets_targets"] = (
        (out["macs_vs_dsa_4t"] >= 2)
        & (out["speedup_vs_dsa"] >= 1.25)
        & (out["speedup_vs_dense"] > 1)
        & (out["ratio_reference_t"] <= 1.01)
        & (out["ratio_reference_worst_low_t"] <= 1.02)
        & (out["task_drop_worst"] <= TASK_POINTS)
    )
    return out
