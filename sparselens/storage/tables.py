"""Parquet datasets on any fsspec filesystem: validate against a schema, write atomically, read with filters.

A table is a directory holding `part-*.parquet` files (hive `col=value/` subdirectories when partitioned) and a
`_common_metadata` file with the full schema and the partition columns, so readers get the written types back.
Files starting with `.` or `_` are invisible to pyarrow datasets; all temporaries use a leading dot.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from sparselens.storage.atomic import atomic_directory, is_local, temp_name
from sparselens.storage.schemas import SCHEMAS, is_snake_case

COMPRESSION = "zstd"
META_FILE = "_common_metadata"
_PARTITION_KEY = b"sparselens.partition_cols"


def arrow_fs(fs: AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow view of an fsspec filesystem (native for local disk, wrapped otherwise)."""
    return pafs.LocalFileSystem() if is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _to_arrow(name: str, data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        try:
            return pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"table {name!r}: cannot convert the DataFrame to Arrow: {e}") from e
    raise TypeError(f"table {name!r}: expected a pandas DataFrame or pyarrow Table, got {type(data).__name__}")


def conform(name: str, data: Any, schema: pa.Schema | None = None) -> pa.Table:
    """Convert `data` to Arrow and, when a schema is given or declared for `name`, check and cast to it.

    Raises ValueError naming missing or extra columns, a column whose values cannot be cast to the declared type,
    or nulls in a non-nullable column; undeclared tables must still have snake_case column names.
    """
    table = _to_arrow(name, data)
    schema = SCHEMAS.get(name) if schema is None else schema
    if schema is None:
        bad = [c for c in table.column_names if not is_snake_case(c)]
        if bad:
            raise ValueError(f"table {name!r}: columns must be snake_case; rename {bad}")
        return table.replace_schema_metadata(None)
    have, want = set(table.column_names), set(schema.names)
    missing, extra = [c for c in schema.names if c not in have], sorted(have - want)
    if missing or extra:
        raise ValueError(
            f"table {name!r} does not match its schema in sparselens/storage/schemas.py: "
            f"missing columns {missing}, unexpected columns {extra}; expected exactly {schema.names}"
        )
    return _cast(name, table.select(schema.names), schema)


def _cast(name: str, table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for fld, column in zip(schema, table.columns, strict=True):
        if not fld.nullable and column.null_count:
            raise ValueError(
                f"table {name!r}: column {fld.name!r} has {column.null_count} null/NaN values "
                f"but is a key column; fill them before writing"
            )
        try:
            columns.append(column.cast(fld.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(
                f"table {name!r}: column {fld.name!r} of type {column.type} cannot be stored as {fld.type}: {e}"
            ) from e
    return pa.Table.from_arrays(columns, schema=schema)


def _partitioning(schema: pa.Schema, cols: list[str]) -> ds.Partitioning | None:
    if not cols:
        return None
    unknown = [c for c in cols if c not in schema.names]
    if unknown:
        raise ValueError(f"partition columns {unknown} are not columns of the table ({schema.names})")
    return ds.partitioning(pa.schema([schema.field(c) for c in cols]), flavor="hive")


def _write_files(fs: AbstractFileSystem, directory: str, table: pa.Table, cols: list[str], basename: str) -> None:
    ds.write_dataset(
        table,
        base_dir=directory,
        filesystem=arrow_fs(fs),
        format="parquet",
        partitioning=_partitioning(table.schema, cols),
        basename_template=basename,
        file_options=ds.ParquetFileFormat().make_write_options(compression=COMPRESSION),
        existing_data_behavior="overwrite_or_ignore",
        create_dir=True,
    )


def _write_meta(fs: AbstractFileSystem, directory: str, schema: pa.Schema, cols: list[str]) -> None:
    meta = dict(schema.metadata or {})
    meta[_PARTITION_KEY] = json.dumps(cols).encode()
    with fs.open(posixpath.join(directory, META_FILE), "wb") as f:
        pq.write_metadata(schema.with_metadata(meta), f)


def read_meta(fs: AbstractFileSystem, directory: str) -> tuple[pa.Schema | None, list[str]]:
    """The schema and partition columns a table was written with; (None, []) for datasets without metadata."""
    path = posixpath.join(directory, META_FILE)
    if not fs.exists(path):
        return None, []
    with fs.open(path, "rb") as f:
        schema = pq.read_schema(f)
    cols = json.loads((schema.metadata or {}).get(_PARTITION_KEY, b"[]"))
    return schema.remove_metadata(), cols


def write_dataset(
    fs: AbstractFileSystem, directory: str, name: str, data: Any, partition_cols: list[str] | None = None
) -> pa.Table:
    """Validate `data` and write it as the whole dataset at `directory`, replacing any old one atomically."""
    table = conform(name, data)
    cols = list(partition_cols or [])
    _partitioning(table.schema, cols)
    with atomic_directory(fs, directory) as tmp:
        _write_files(fs, tmp, table, cols, "part-{i}.parquet")
        _write_meta(fs, tmp, table.schema, cols)
    return table


def append_dataset(fs: AbstractFileSystem, directory: str, name: str, data: Any) -> None:
    """Add `data` to an existing dataset as new uniquely named files, each published atomically.

    The rows are validated against the schema the dataset was written with. Each new file appears whole or not
    at all; an append that spans several partitions is not atomic as a whole.
    """
    schema, cols = read_meta(fs, directory)
    table = conform(name, data, schema)
    staging = temp_name(directory, "append")
    try:
        _write_files(fs, staging, table, cols, f"part-{uuid.uuid4().hex[:12]}-{{i}}.parquet")
        for src in fs.find(staging):
            dst = posixpath.join(directory, posixpath.relpath(src, staging))
            fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            if is_local(fs):
                os.replace(src, dst)
            else:
                fs.mv(src, dst)
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)


def read_dataset(
    fs: AbstractFileSystem, directory: str, name: str, filters: Any = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Read a dataset into pandas with the written (or declared) schema.

    `filters` is a pyarrow expression or pandas-style DNF, e.g. `[("seq_len", "=", 512)]`.
    """
    schema, cols = read_meta(fs, directory)
    schema = schema or SCHEMAS.get(name)
    if schema is not None:
        partitioning = _partitioning(schema, cols) if cols else "hive"
    else:
        partitioning = "hive"
    dataset = ds.dataset(directory, schema=schema, format="parquet", filesystem=arrow_fs(fs), partitioning=partitioning)
    if columns is not None:
        unknown = [c for c in columns if c not in dataset.schema.names]
        if unknown:
            raise ValueError(f"table {name!r} has no columns {unknown}; it has {dataset.schema.names}")
    if filters is not None and not isinstance(filters, ds.Expression):
        filters = pq.filters_to_expression(filters)
    return dataset.to_table(columns=columns, filter=filters).to_pandas()
