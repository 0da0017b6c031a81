"""Phase 1 charts drawn from the run's tables, saved as offline HTML + PNG under `charts/phase1/`.

Maps and token views read the capture tables `attention_topk` and `selections` for the chosen samples; every
other chart reads a `phase1_*` table. The list of charts is written as the `phase1_charts` table.
"""

from __future__ import annotations

import pandas as pd

from sparselens.config import InterpretConfig
from sparselens.interpret import maps
from sparselens.interpret.run import reference_length
from sparselens.runs import run_preset
from sparselens.storage import RunStore
from sparselens.viz import attention_charts as ac
from sparselens.viz import stat_charts as sc
from sparselens.viz.save import SavedChart, save_chart

FOLDER = "charts/phase1"


def _view_samples(store: RunStore, cfg: InterpretConfig) -> list[tuple[str, int, str]]:
    """(content_type, seq_len, sample_id) of every map to draw: configured types x captured lengths."""
    index = store.read_table(
        "attention_topk",
        filters=[("layer", "=", 0), ("head", "=", 0), ("query_pos", "=", 0)],
        columns=["content_type", "seq_len", "sample_id"],
    ).drop_duplicates()
    out = []
    for ct in cfg.view_content_types:
        for t in sorted(index["seq_len"].unique().tolist()):
            sid = f"{ct}-{t}-{cfg.view_sample}"
            if (index["sample_id"] == sid).any():
                out.append((ct, int(t), sid))
    return out


def _map_panels(rows: pd.DataFrame, t: int, cfg: InterpretConfig) -> tuple[list[list[ac.Panel]], pd.DataFrame, str]:
    """Heatmap panels (one row per model and layer) of one sample, its profiles, and a note on pooling."""
    grid, profiles, note = [], [], "full maps"
    n_heads = int(rows["head"].max()) + 1
    for (layer, model), g in rows.groupby(["layer", "model"], sort=True):  # dense and DSA of a layer adjacent
        full = maps.attention_maps(g, n_heads, t)  # [H, T, T]
        profiles.append(maps.profile_frame(full).assign(model=model, layer=int(layer)))
        values, size = (full, 1) if t <= cfg.full_map_max_len else maps.pool_maps(full, cfg.pooled_blocks)
        if size > 1:
            note = f"block-pooled: {size}x{size}-token blocks, mean weight per query"
        grid.append([ac.Panel(f"{model} · layer {layer} · head {h}", values[h], t) for h in range(n_heads)])
    return grid, pd.concat(profiles, ignore_index=True), note


def attention_figures(store: RunStore, cfg: InterpretConfig) -> tuple[list[SavedChart], pd.DataFrame]:
    """Map grids for every view sample and length, profile charts beyond full_map_max_len; the profiles table."""
    saved, all_profiles = [], []
    for ct, t, sid in _view_samples(store, cfg):
        rows = store.read_table(
            "attention_topk",
            filters=[("seq_len", "=", t), ("sample_id", "=", sid)],
            columns=["model", "layer", "head", "query_pos", "keys", "weights"],
        )
        grid, profiles, note = _map_panels(rows, t, cfg)
        all_profiles.append(profiles.assign(content_type=ct, sample_id=sid, seq_len=t))
        title = f"Dense vs DSA attention · {sid} (T = {t})"
        subtitle = [
            f"{note}; rows: layer · model, columns: heads; grey: future keys (causal mask)",
            "weights from attention_topk (top-m keys per query); log colour; a pixel shows the largest weight in it",
        ]
        chart = ac.heatmap_grid(grid, title, subtitle, cfg.panel_px, "attention weight", cfg.png_scale)
        saved.append(save_chart(store, FOLDER, f"maps-{sid}", title, chart, cfg.png_scale))
        if t > cfg.full_map_max_len:
            ptitle = f"Slash and vertical profiles · {sid} (T = {t})"
            psub = "mean weight at each distance t - s (diagonals) and on each key s (columns), log-binned"
            pchart = ac.profile_chart(profiles, ptitle, psub)
            saved.append(save_chart(store, FOLDER, f"profiles-{sid}", ptitle, pchart, cfg.png_scale))
    frame = pd.concat(all_profiles, ignore_index=True) if all_profiles else pd.DataFrame()
    return saved, frame


def token_figures(store: RunStore, cfg: InterpretConfig, k: int, t: int) -> list[SavedChart]:
    """For each view content type at length t: the text with each layer's selected keys for one query."""
    saved = []
    for ct in cfg.view_content_types:
        sid = f"{ct}-{t}-{cfg.view_sample}"
        sel = store.read_table(
            "selections",
            filters=[("seq_len", "=", t), ("sample_id", "=", sid)],
            columns=["layer", "query_pos", "token", "selected", "needed"],
        )
        if sel.empty:
            continue
        query = maps.pick_query(sel[sel["layer"] == 0], k)
        view = maps.token_view(sel, query, cfg.text_width)
        title = f"Keys the indexer selected for query {query} · {sid}"
        sub = f"one panel per layer; k = {k}; text up to the query (↵ newline, · space); green = needed and selected"
        chart = ac.token_view_chart(view, title, sub, cfg.text_width)
        saved.append(save_chart(store, FOLDER, f"tokens-{sid}", title, chart, cfg.png_scale))
    return saved


def _stat_charts(store: RunStore, cfg: InterpretConfig, k: int, t_ref: int) -> list[tuple[str, str, object]]:
    """(name, title, chart) of every summary chart, built from the phase1_* tables."""
    hist = store.read_table("phase1_histograms", filters=[("seq_len", "=", t_ref)])
    heads = store.read_table("phase1_indexer_heads", filters=[("seq_len", "=", t_ref)])
    corr = store.read_table("phase1_indexer_corr", filters=[("seq_len", "=", t_ref)])
    mass = store.read_table("phase1_indexer_mass")
    scaling = store.read_table("phase1_scaling")
    t_max = int(mass["seq_len"].max())
    mass = mass[(mass["seq_len"] == t_max) & (mass["indexer_head"] == -1)]
    pooled = scaling[scaling["content_type"] == "all"]
    at = f"T = {t_ref}"
    titles = {
        "entropy": ("Attention entropy per layer and head", f"{at}; all content types"),
        "indexer-scores": ("Indexer score distribution per head", f"{at}; per-query quantiles of w·ReLU(q·k)"),
        "indexer-activity": ("Indexer ReLU activity and head weights", at),
        "indexer-corr": ("Indexer heads vs main heads", f"{at}; Pearson r of score row vs dense attention row"),
        "indexer-mass": (
            "Keys covering 50/90/99% of the indexer's softmax mass",
            f"T = {t_max}; combined score I; dashed: k = {k}",
        ),
        "scaling-recall": ("Indexer recall against length", f"queries t >= k = {k}; grey: {cfg.recall_threshold}"),
        "scaling-keys": ("Keys needed for 90% / 95% of dense attention mass", f"dense model; dashed: k = {k}"),
        "scaling-entropy": ("Attention entropy against length", "mean over queries, heads and content types"),
    }
    charts = {
        "entropy": sc.entropy_chart(hist[hist["quantity"] == "entropy"], *titles["entropy"]),
        "indexer-scores": sc.indexer_scores_chart(heads, *titles["indexer-scores"]),
        "indexer-activity": sc.indexer_activity_chart(
            heads, hist[hist["quantity"] == "indexer_weight"], *titles["indexer-activity"]
        ),
        "indexer-corr": sc.indexer_corr_chart(corr, *titles["indexer-corr"]),
        "indexer-mass": sc.indexer_mass_chart(mass, k, *titles["indexer-mass"]),
        "scaling-recall": sc.recall_chart(scaling, cfg.recall_threshold, *titles["scaling-recall"]),
        "scaling-keys": sc.keys_needed_chart(pooled[pooled["model"] == "dense"], k, *titles["scaling-keys"]),
        "scaling-entropy": sc.entropy_scaling_chart(pooled, *titles["scaling-entropy"]),
    }
    return [(name, titles[name][0], chart) for name, chart in charts.items()]


def stat_figures(store: RunStore, cfg: InterpretConfig, k: int, t_ref: int) -> list[SavedChart]:
    """Entropy, indexer and scaling charts from the phase1_* tables."""
    return [
        save_chart(store, FOLDER, name, title, chart, cfg.png_scale)
        for name, title, chart in _stat_charts(store, cfg, k, t_ref)
    ]


def draw_phase1_charts(store: RunStore, cfg: InterpretConfig) -> list[SavedChart]:
    """Every Phase 1 chart; writes phase1_profiles and phase1_charts and returns what was saved."""
    preset = run_preset(store)
    k = preset.model.topk
    lengths = sorted(store.read_table("phase1_scaling", columns=["seq_len"])["seq_len"].unique().tolist())
    t_ref = reference_length(lengths, preset.train.seq_len)
    saved, profiles = attention_figures(store, cfg)
    saved += token_figures(store, cfg, k, t_ref)
    saved += stat_figures(store, cfg, k, t_ref)
    if not profiles.empty:
        store.write_table("phase1_profiles", profiles.assign(run_id=store.run_id))
    listing = pd.DataFrame([{"name": s.name, "title": s.title, "png": s.png, "html": s.html} for s in saved])
    store.write_table("phase1_charts", listing.assign(run_id=store.run_id))
    return saved
