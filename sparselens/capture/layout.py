"""Where capture files go, which work a (model, length) unit holds, and the capture plan of a run.

Every file is `tables/<table>/model=<m>/seq_len=<T>/layer=<L>/part-<chunk>.parquet`, named by its chunk of
samples, so a rerun knows exactly which files exist and rewrites a missing one with identical content. The plan
(`capture/plan.json`: the capture config and a hash of every captured model's file) is written before any table;
a rerun with a different config, or after a model was retrained, drops the old capture tables instead of mixing
two captures.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from sparselens.config import CaptureConfig
from sparselens.data.dataset import Sample, validation_samples
from sparselens.storage import RunStore
from sparselens.storage.atomic import remove_stale_temps
from sparselens.storage.schemas import CAPTURE_PARTITIONS, SCHEMAS
from sparselens.storage.tables import COMPRESSION

TABLES = ("query_stats", "attention_topk", "indexer_stats", "selections")
DSA_TABLES = ("indexer_stats", "selections")  # only models with indexers write these
PLAN_FILE = "capture/plan.json"
MAX_ROW_GROUP = 1 << 20  # rows; a file (one chunk) is normally one row group = one Dask partition


@dataclass(frozen=True)
class Chunk:
    """Samples of one forward batch; `topk[i]` marks samples that also go to attention_topk."""

    index: int
    samples: tuple[Sample, ...]
    topk: tuple[bool, ...]


def unit_samples(cfg: CaptureConfig, seq_len: int) -> tuple[list[Sample], list[bool]]:
    """All samples of one length, content types in config order, and which of them keep top-m maps."""
    samples, topk = [], []
    for ct in cfg.content_types:
        chosen = validation_samples(ct, seq_len, cfg.n_samples)
        samples += chosen
        topk += [i < cfg.topk_samples for i in range(len(chosen))]
    return samples, topk


def chunk_size(cfg: CaptureConfig, n_heads: int, seq_len: int) -> int:
    """Samples per forward chunk: B * H * T^2 stays within cfg.chunk_elements (at least one sample)."""
    return max(1, cfg.chunk_elements // (n_heads * seq_len * seq_len))


def plan_chunks(cfg: CaptureConfig, n_heads: int, seq_len: int) -> list[Chunk]:
    samples, topk = unit_samples(cfg, seq_len)
    size = chunk_size(cfg, n_heads, seq_len)
    return [
        Chunk(i // size, tuple(samples[i : i + size]), tuple(topk[i : i + size])) for i in range(0, len(samples), size)
    ]


def tables_for(chunk: Chunk, has_indexer: bool) -> list[str]:
    """The tables one chunk of a model writes."""
    names = ["query_stats"] + (["attention_topk"] if any(chunk.topk) else [])
    return names + (list(DSA_TABLES) if has_indexer else [])


def part_path(store: RunStore, table: str, model: str, seq_len: int, layer: int, chunk: int) -> str:
    """Path (on store.fs) of one capture file."""
    partition = f"model={model}/seq_len={seq_len}/layer={layer}"
    return posixpath.join(store.run_dir, "tables", table, partition, f"part-{chunk:05d}.parquet")


def write_part(store: RunStore, path: str, table: pa.Table) -> int:
    """Write one file atomically (zstd, one row group per MAX_ROW_GROUP rows); return its size in bytes."""
    remove_stale_temps(store.fs, path)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=COMPRESSION, row_group_size=MAX_ROW_GROUP)
    store.write_part(path, buf.getvalue())  # atomic; on object stores it also joins the table's commit record
    return buf.tell()


def ensure_tables(store: RunStore) -> None:
    """Create each capture table's directory and schema metadata (no rows) unless it exists."""
    for name in TABLES:
        if not store.table_exists(name):
            store.write_table(name, SCHEMAS[name].empty_table(), partition_cols=CAPTURE_PARTITIONS)


def capture_plan(store: RunStore, cfg: CaptureConfig) -> dict:
    """What a capture's files depend on: the capture config and the identity (file hash) of every model captured."""
    models = {name: store.model_digest(name) if store.has_model(name) else None for name in cfg.models}
    return {"run_id": store.run_id, "capture": dataclasses.asdict(cfg), "models": models}


def prepare(store: RunStore, cfg: CaptureConfig, fresh: bool = False) -> bool:
    """Record the plan; drop capture tables written under another plan (another config or a retrained model), or
    all of them when `fresh`.

    Returns True when earlier capture files were kept (a resume), False when capture starts from nothing.
    """
    plan = json.loads(json.dumps(capture_plan(store, cfg)))
    old = json.loads(store.read_text(PLAN_FILE)) if store.fs.exists(posixpath.join(store.run_dir, PLAN_FILE)) else None
    keep = not fresh and old == plan
    if not keep:
        for name in TABLES:
            store.delete_table(name)  # on object stores its commit record goes first: no half-deleted table
        store.write_text(PLAN_FILE, json.dumps(plan, indent=2) + "\n")
    ensure_tables(store)
    return keep


def table_sizes(store: RunStore) -> list[dict]:
    """Per capture table: files, rows (from Parquet footers) and bytes on disk."""
    out = []
    for name in TABLES:
        root = posixpath.join(store.run_dir, "tables", name)
        files = (
            [p for p in store.fs.find(root) if p.endswith(".parquet") and "/." not in p]
            if store.fs.exists(root)
            else []
        )
        rows = 0
        for path in files:
            with store.fs.open(path, "rb") as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        out.append({"table": name, "files": len(files), "rows": rows, "bytes": sum(store.fs.size(p) for p in files)})
    return out
