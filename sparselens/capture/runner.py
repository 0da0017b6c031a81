"""Capture one (model, length) unit: hooked forward passes chunk by chunk and layer by layer, rows to Parquet.

Memory stays bounded: one chunk of samples (B * H * T^2 <= chunk_elements) and one layer's hook tensors at a
time; each layer is its own hooked pass, so the layers before it run exactly as deployed. A (chunk, layer) whose
files all exist is skipped, so a killed capture resumes where it stopped and a finished one reruns in seconds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch

from sparselens.capture import layout
from sparselens.capture.rows import (
    ChunkMeta,
    attention_topk_table,
    indexer_stats_table,
    query_stats_table,
    selections_table,
)
from sparselens.capture.stats import (
    attention_row_stats,
    indexer_row_stats,
    needed_mask,
    selection_stats,
)
from sparselens.config import CaptureConfig
from sparselens.data.dataset import stack_tokens
from sparselens.models import capture
from sparselens.storage import RunStore
from sparselens.viz.markdown import Summary, markdown_table, records

Progress = Callable[[int, int], None]  # (steps done, steps total) of one unit, a step = one (chunk, layer)


@dataclass
class UnitResult:
    """What one unit did: rows and bytes written, files and partitions skipped because they existed."""

    model: str
    seq_len: int
    rows: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    files_written: int = 0
    files_skipped: int = 0
    partitions_skipped: int = 0
    seconds: float = 0.0


def layer_hooks(layer: int, has_indexer: bool) -> list[str]:
    """Hook names one layer's statistics need."""
    names = [f"blocks.{layer}.attn.hook_pattern"]
    if has_indexer:
        names.append(f"blocks.{layer}.attn.hook_dense_pattern")
        hooks = ("hook_scores", "hook_head_scores", "hook_weights", "hook_topk")
        names += [f"blocks.{layer}.indexer.{h}" for h in hooks]
    return names


def layer_tables(
    cache: dict[str, torch.Tensor], layer: int, meta: ChunkMeta, chunk: layout.Chunk, cfg: CaptureConfig, k: int
) -> dict:
    """All capture tables of one chunk at one layer, from that layer's hook tensors (k: the model's topk)."""
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [B, H, T, T]
    b, h, t, _ = pattern.shape
    has_indexer = f"blocks.{layer}.indexer.hook_topk" in cache
    stats = attention_row_stats(pattern, cfg.sink_keys, cfg.local_keys, k if has_indexer else None)
    out = _indexer_tables(cache, layer, meta, chunk, stats) if has_indexer else {}
    out["query_stats"] = query_stats_table(meta, stats, b, h, t)
    if any(chunk.topk):
        keep = torch.tensor(chunk.topk, device=pattern.device)
        ids = tuple(s for s, kept in zip(meta.sample_ids, chunk.topk, strict=True) if kept)
        cts = tuple(c for c, kept in zip(meta.content_types, chunk.topk, strict=True) if kept)
        top_m = max(cfg.top_m, k) if has_indexer else cfg.top_m  # every key a DSA row looked at: its map is exact
        out["attention_topk"] = attention_topk_table(
            ChunkMeta(meta.run_id, meta.model, meta.seq_len, ids, cts), pattern[keep], top_m
        )
    return out


def _indexer_tables(
    cache: dict[str, torch.Tensor], layer: int, meta: ChunkMeta, chunk: layout.Chunk, stats: dict
) -> dict:
    """indexer_stats and selections of a DSA layer; adds the selection columns to `stats` (query_stats)."""
    dense = cache[f"blocks.{layer}.attn.hook_dense_pattern"]  # [B, H, T, T]
    idx = cache[f"blocks.{layer}.indexer.hook_topk"]  # [B, T, k]
    t = dense.shape[-1]
    needed = [s.needed for s in chunk.samples]
    truth = needed_mask(needed, t, t).to(idx.device) if any(n is not None for n in needed) else None  # [B, T, T]
    has_truth = torch.tensor([n is not None for n in needed])  # [B]
    stats.update(selection_stats(dense, idx, truth, has_truth))
    scores = cache[f"blocks.{layer}.indexer.hook_scores"].unsqueeze(1)  # [B, 1, T, T]
    rows = torch.cat([scores, cache[f"blocks.{layer}.indexer.hook_head_scores"]], dim=1)  # [B, 1 + HI, T, T]
    ix = indexer_row_stats(rows, dense)
    tokens = torch.from_numpy(stack_tokens(list(chunk.samples)).numpy()[:, :t])  # [B, T] inputs
    return {
        "indexer_stats": indexer_stats_table(meta, ix, cache[f"blocks.{layer}.indexer.hook_weights"]),
        "selections": selections_table(meta, tokens, idx, needed),
    }


def retain_freed_memory() -> None:
    """Keep freed tensor memory in the process (glibc only) instead of returning it to the OS after every chunk.

    Each (chunk, layer) allocates and frees the same few large maps; by default glibc serves blocks over its
    dynamic threshold with fresh mmaps, and the page faults cost about a third of capture time on a 2-core box.
    Raising the mmap threshold to its maximum (32 MiB) and never trimming keeps the process at its chunk-sized
    peak instead. A no-op where mallopt is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
    mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD


def capture_unit(
    store: RunStore, cfg: CaptureConfig, model_name: str, seq_len: int, progress: Progress | None = None
) -> UnitResult:
    """Capture `model_name` at `seq_len` into the four tables; skip (chunk, layer) files that already exist."""
    t0 = time.perf_counter()
    retain_freed_memory()
    model = store.load_model(model_name, map_location=cfg.device)
    mcfg = model.cfg
    if seq_len > mcfg.max_seq_len:
        raise ValueError(
            f"seq_len {seq_len} exceeds model {model_name!r} max_seq_len={mcfg.max_seq_len}; "
            f"drop it from the capture seq_lens"
        )
    has_indexer = mcfg.attention == "dsa"
    chunks = layout.plan_chunks(cfg, mcfg.n_heads, seq_len)
    result = UnitResult(model_name, seq_len)
    complete = dict.fromkeys(range(mcfg.n_layers), True)
    total, done = len(chunks) * mcfg.n_layers, 0
    for chunk in chunks:
        meta = ChunkMeta(
            store.run_id,
            model_name,
            seq_len,
            tuple(s.sample_id for s in chunk.samples),
            tuple(s.content_type for s in chunk.samples),
        )
        tokens = stack_tokens(list(chunk.samples))[:, :-1].to(cfg.device)  # [B, T]
        for layer in range(mcfg.n_layers):
            paths = {
                name: layout.part_path(store, name, model_name, seq_len, layer, chunk.index)
                for name in layout.tables_for(chunk, has_indexer)
            }
            if all(store.part_exists(p) for p in paths.values()):
                result.files_skipped += len(paths)
            else:
                complete[layer] = False
                cache = capture(model, tokens, layer_hooks(layer, has_indexer))
                tables = layer_tables(cache, layer, meta, chunk, cfg, mcfg.topk)
                del cache
                for name, path in paths.items():
                    result.bytes_written += layout.write_part(store, path, tables[name])
                    result.rows[name] = result.rows.get(name, 0) + tables[name].num_rows
                    result.files_written += 1
            done += 1
            if progress is not None:
                progress(done, total)
    result.partitions_skipped = sum(complete.values())
    result.seconds = time.perf_counter() - t0
    return result


def capture_units(cfg: CaptureConfig) -> list[tuple[str, int]]:
    """The (model, seq_len) units of a capture, in the order they run."""
    return [(m, t) for m in cfg.models for t in cfg.seq_lens]


def capture_summary(store: RunStore, results: list[UnitResult | dict]) -> Summary:
    """What the capture phase publishes: work per (model, length) unit and the size of each capture table."""
    units = pd.DataFrame(
        [
            {
                "model": r["model"],
                "seq_len": r["seq_len"],
                "rows": sum(r["rows"].values()),
                "mb_written": r["bytes_written"] / 1e6,
                "files_skipped": r["files_skipped"],
                "seconds": r["seconds"],
            }
            for r in (x if isinstance(x, dict) else dataclasses.asdict(x) for x in results)
        ]
    )
    sizes = pd.DataFrame(layout.table_sizes(store))
    sizes["mb"] = sizes.pop("bytes") / 1e6
    seconds, rows = float(units["seconds"].sum()), int(units["rows"].sum())
    return Summary(
        markdown=(
            f"# Capture of run `{store.run_id}`\n\n{rows:,} rows written in {seconds:.0f} s "
            f"({rows / max(seconds, 1e-9):,.0f} rows/s).\n\n## Tables\n\n{markdown_table(sizes, 2)}\n\n"
            f"## Units\n\n{markdown_table(units, 2)}\n"
        ),
        description="capture tables: rows, files, size; work per model and length",
        tables={"capture-tables": records(sizes, 3)},
        result={"rows_written": rows, "seconds": seconds, "tables": sizes.to_dict("records")},
    )


def capture_run(
    store: RunStore, cfg: CaptureConfig, fresh: bool = False, progress: Callable[[float], None] | None = None
) -> list[UnitResult]:
    """Capture every unit of `cfg` (library entry point without Prefect); progress gets the fraction done."""
    layout.prepare(store, cfg, fresh)
    units = capture_units(cfg)
    results = []
    for i, (model, seq_len) in enumerate(units):

        def unit_progress(done: int, total: int, i: int = i) -> None:
            if progress is not None:
                progress((i + done / total) / len(units))

        results.append(capture_unit(store, cfg, model, seq_len, unit_progress))
    return results
