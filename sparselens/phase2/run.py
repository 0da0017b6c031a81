"""Phase 2 over a run store: head features, clusters, content map, efficiency, sparsify-one-head -> `phase2_*` tables,
then the charts and the report section.

Each `write_*` step reads the capture tables (or an earlier step's table), runs its parallel part on a Dask
`client` (None: in this process) and writes its tables, so a Prefect task can run each alone and steps that do not
depend on each other (features, efficiency, sparsify) can run at the same time on one cluster; `run_phase2` does
exactly that with threads. The maths is `sparselens.analysis`; the charts and report are `sparselens.viz.phase2_*`
(rendered here, one Dask task per chart).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sparselens.analysis import clustering, content
from sparselens.config import PatternsConfig
from sparselens.data.dataset import CONTENT_TYPES
from sparselens.phase2 import features, modelruns
from sparselens.phase2.parallel import compute, gather, submit_map
from sparselens.runs import run_preset
from sparselens.storage import RunStore
from sparselens.storage.atomic import is_local
from sparselens.viz.phase2_report import FOLDER, chart_specs, write_phase2_report
from sparselens.viz.save import save_chart

MODELS = ("dense", "dsa")
Progress = Callable[[int, int], None]  # (work units done, work units in all)
LONG_TASKS = 10  # Dask priority of the model units (seconds each): start them first, short tasks fill in after


@dataclass(frozen=True)
class RunFacts:
    """What Phase 2 needs to know about a run. Dask workers reopen the run from ``root`` (a local path or an
    fsspec URL), so it must be reachable from every worker: local disk for a LocalCluster, shared storage otherwise."""

    root: str
    run_id: str
    models: tuple[str, ...]
    topk: int
    train_seq_len: int
    n_layers: int


def run_facts(store: RunStore) -> RunFacts:
    preset = run_preset(store)
    models = tuple(m for m in MODELS if store.has_model(m))
    if not models:
        raise FileNotFoundError(f"run {store.run_id!r} has no dense or dsa model; run the train phase first")
    root = store.root if is_local(store.fs) else store.fs.unstrip_protocol(store.root)
    return RunFacts(root, store.run_id, models, preset.model.topk, preset.train.seq_len, preset.model.n_layers)


def _write(store: RunStore, name: str, df: pd.DataFrame) -> int:
    store.write_table(name, df.assign(run_id=store.run_id))
    return len(df)


def write_features(store: RunStore, cfg: PatternsConfig, client=None) -> dict[str, int]:
    """Head features (dask.dataframe over query_stats + attention_topk) and the ground-truth view of them."""
    facts = run_facts(store)
    heads, _ = features.head_features(store, facts.topk, client, cfg.budget, cfg.max_queries)
    heads["n_needed_queries"] = heads["n_needed_queries"].round().astype("int64")
    return {
        "phase2_head_features": _write(store, "phase2_head_features", heads),
        "phase2_ground_truth": _write(store, "phase2_ground_truth", content.ground_truth_heads(heads)),
    }


def write_content(store: RunStore, cfg: PatternsConfig, client=None) -> dict[str, int]:
    """Kind distribution and stability (from phase2_head_features) and DSA selection relevance (selections)."""
    heads = store.read_table("phase2_head_features")
    counts = {
        "phase2_kind_distribution": _write(store, "phase2_kind_distribution", content.kind_distribution(heads)),
        "phase2_kind_stability": _write(store, "phase2_kind_stability", content.kind_stability(heads)),
    }
    if store.table_exists("selections"):
        (sums,) = compute(client, features.lazy_relevance(store.table_source("selections"), run_facts(store).topk))
        counts["phase2_relevance"] = _write(store, "phase2_relevance", content.finish_relevance(sums))
    return counts


def write_clusters(store: RunStore, cfg: PatternsConfig, client=None) -> dict[str, int]:
    """KMeans (k by silhouette) and HDBSCAN per (model, content_type, seq_len) group and per model, on `client`."""
    heads = store.read_table("phase2_head_features")
    items = clustering.cluster_items(heads)
    kwargs = {"max_k": cfg.max_k, "min_cluster_size": cfg.min_cluster_size}
    points, summary = clustering.combine_clusters(
        gather(client, submit_map(client, clustering.cluster_item, items, **kwargs))
    )
    return {
        "phase2_clusters": _write(store, "phase2_clusters", points),
        "phase2_cluster_summary": _write(store, "phase2_cluster_summary", summary),
    }


def efficiency_specs(facts: RunFacts, cfg: PatternsConfig) -> list[dict]:
    lengths = cfg.efficiency_seq_lens or (facts.train_seq_len,)
    return [
        {
            "root": facts.root,
            "run_id": facts.run_id,
            "model": m,
            "content_type": ct,
            "seq_len": int(t),
            "budget": cfg.budget,
            "grid": cfg.density_points,
            "n_samples": cfg.efficiency_samples,
        }
        for m in facts.models
        for t in lengths
        for ct in CONTENT_TYPES
    ]


def write_efficiency(
    store: RunStore, cfg: PatternsConfig, client=None, progress: Progress | None = None
) -> dict[str, int]:
    """Recall-density curves, AUC, regret and FLOPs of every head, one Dask task per (model, content, length);
    `progress(done, total)` counts finished tasks."""
    specs = efficiency_specs(run_facts(store), cfg)
    results = gather(client, submit_map(client, modelruns.efficiency_unit, specs, priority=LONG_TASKS), progress)
    curves = pd.concat([c for c, _ in results], ignore_index=True)
    metrics = pd.concat([m for _, m in results], ignore_index=True)
    return {
        "phase2_curves": _write(store, "phase2_curves", curves),
        "phase2_efficiency": _write(store, "phase2_efficiency", metrics),
    }


def sparsify_specs(facts: RunFacts, cfg: PatternsConfig) -> list[dict]:
    t = cfg.sparsify_seq_len or facts.train_seq_len
    return [
        {
            "root": facts.root,
            "run_id": facts.run_id,
            "model": m,
            "layer": layer,
            "seq_len": int(t),
            "n_samples": cfg.sparsify_samples,
            "budget": cfg.budget,
        }
        for m in facts.models
        for layer in range(facts.n_layers)
    ]


def write_sparsify(
    store: RunStore, cfg: PatternsConfig, client=None, progress: Progress | None = None
) -> dict[str, int]:
    """Sparsify one head at a time, every head of every model; one Dask task per (model, layer);
    `progress(done, total)` counts finished tasks."""
    specs = sparsify_specs(run_facts(store), cfg)
    results = gather(client, submit_map(client, modelruns.sparsify_unit, specs, priority=LONG_TASKS), progress)
    return {"phase2_sparsify": _write(store, "phase2_sparsify", pd.concat(results, ignore_index=True))}


def _table_steps(store: RunStore, cfg: PatternsConfig, client) -> dict[str, int]:
    counts = write_features(store, cfg, client)
    counts |= write_content(store, cfg, client)
    return counts | write_clusters(store, cfg, client)


def run_phase2_tables(store: RunStore, cfg: PatternsConfig, client=None) -> tuple[dict[str, int], dict[str, float]]:
    """Every phase2_* table; with a client, efficiency and sparsify run beside the features on the same cluster.

    Returns (row counts per table, seconds per step).
    """
    steps = {"sparsify": write_sparsify, "efficiency": write_efficiency, "features+content+clusters": _table_steps}
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}

    def timed(name: str):
        t0 = time.perf_counter()
        out = steps[name](store, cfg, client)
        seconds[name] = time.perf_counter() - t0
        return out

    if client is None:
        for name in steps:
            counts |= timed(name)
        return counts, seconds
    with concurrent.futures.ThreadPoolExecutor(len(steps)) as pool:
        for result in [pool.submit(timed, name) for name in steps]:
            counts |= result.result()
    return counts, seconds


def _save_chart(item: tuple, scale: float) -> dict:
    root, run_id, name, title, chart = item
    saved = save_chart(RunStore(root, run_id), FOLDER, name, title, chart, scale)
    return {"name": saved.name, "title": saved.title, "png": saved.png, "html": saved.html}


def write_charts(store: RunStore, cfg: PatternsConfig, client=None) -> pd.DataFrame:
    """Render every Phase 2 chart (on `client`, one task each) and write the `phase2_charts` listing; return it."""
    root = run_facts(store).root
    items = [(root, store.run_id, name, title, chart) for name, title, chart in chart_specs(store)]
    listing = pd.DataFrame(gather(client, submit_map(client, _save_chart, items, scale=cfg.png_scale)))
    store.write_table("phase2_charts", listing.assign(run_id=store.run_id))
    return listing


def run_phase2(store: RunStore, cfg: PatternsConfig, client=None) -> dict[str, Any]:
    """All of Phase 2 for one run: tables, charts (rendered on `client`), report section; returns counts and
    seconds per step (the entry point for scripts and benchmarks; the flow runs the same steps as tasks)."""
    t0 = time.perf_counter()
    counts, seconds = run_phase2_tables(store, cfg, client)
    seconds["tables"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    charts = write_charts(store, cfg, client)
    seconds["charts"] = time.perf_counter() - t1
    report = write_phase2_report(store)
    seconds["total"] = time.perf_counter() - t0
    return {"counts": counts, "seconds": seconds, "charts": len(charts), "report": report}
