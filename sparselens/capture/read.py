"""Read capture (or any hive-partitioned) tables with their declared schema through pyarrow or Dask.

`RunStore.read_table` gives pandas; Phase 2 works on Dask, where each capture file is one partition.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds

from sparselens.storage import RunStore
from sparselens.storage.schemas import SCHEMAS
from sparselens.storage.tables import arrow_fs, dataset_source, read_meta


def _schema_and_partitioning(store: RunStore, name: str) -> tuple[pa.Schema, ds.Partitioning | None]:
    schema, cols = read_meta(store.fs, f"{store.run_dir}/tables/{name}")
    schema = SCHEMAS.get(name, schema)
    if schema is None:
        raise ValueError(f"table {name!r} has no declared or written schema; was it written by RunStore?")
    part = ds.partitioning(pa.schema([schema.field(c) for c in cols]), flavor="hive") if cols else None
    return schema, part


def arrow_dataset(store: RunStore, name: str) -> ds.Dataset:
    """A pyarrow dataset of table `name` typed by its declared schema (partition columns included)."""
    schema, part = _schema_and_partitioning(store, name)
    directory = f"{store.run_dir}/tables/{name}"
    source = dataset_source(store.fs, directory)  # object stores: only the committed files
    base = {"partition_base_dir": directory} if isinstance(source, list) else {}
    return ds.dataset(source, schema=schema, format="parquet", filesystem=arrow_fs(store.fs), partitioning=part, **base)


def dask_frame(store: RunStore, name: str, columns: list[str] | None = None, filters=None):
    """A dask DataFrame of table `name` (one partition per file, i.e. per capture chunk), declared dtypes."""
    import dask.dataframe as dd

    _, part = _schema_and_partitioning(store, name)
    dataset = {"partitioning": part} if part is not None else {}
    return dd.read_parquet(store.table_source(name), columns=columns, filters=filters, dataset=dataset)
