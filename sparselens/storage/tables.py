"""Parquet datasets on any fsspec filesystem: validate against a schema, write atomically, read with filters.

A table is a directory holding `part-*.parquet` files (hive `col=value/` subdirectories when partitioned) and a
`_common_metadata` file with the full schema and the partition columns, so readers get the written types back.
Files starting with `.` or `_` are invisible to pyarrow datasets; all temporaries use a leading dot.

Publishing: on local disk a whole-table write builds a hidden temporary directory and renames it into place
(storage/atomic.py). Elsewhere (object stores cannot rename) data objects get unique names and the `_SUCCESS`
commit record, written last, says which of them form the table (storage/commit.py); readers here read only
those.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from sparselens.storage import commit as cm
from sparselens.storage.atomic import atomic_directory, atomic_write_bytes, is_local, remove_stale_temps, temp_name
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


def _write_files(fs: AbstractFileSystem, directory: str, table: pa.Table, cols: list[str], basename: str) -> list[str]:
    """Write `table` as Parquet files under `directory`; return their paths relative to it."""
    written: list[str] = []
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
        file_visitor=lambda f: written.append(cm.relative(directory, f.path)),
    )
    return written


def _write_meta(fs: AbstractFileSystem, directory: str, schema: pa.Schema, cols: list[str]) -> None:
    meta = dict(schema.metadata or {})
    meta[_PARTITION_KEY] = json.dumps(cols).encode()
    with fs.open(posixpath.join(directory, META_FILE), "wb") as f:
        pq.write_metadata(schema.with_metadata(meta), f)


def read_meta(fs: AbstractFileSystem, directory: str) -> tuple[pa.Schema | None, list[str]]:
    """The schema and partition columns a table was written with; (None, []) for datasets without metadata.

    Where the table has a commit record, they come from it (the `_common_metadata` file may belong to a write
    that died before its commit)."""
    commit = cm.read_commit(fs, directory)
    if commit is not None:
        return commit.schema, list(commit.partition_cols)
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
    if cm.uses_record(fs):
        _commit_new_version(fs, directory, table, cols)
        return table
    with atomic_directory(fs, directory) as tmp:
        _write_files(fs, tmp, table, cols, "part-{i}.parquet")
        _write_meta(fs, tmp, table.schema, cols)
    return table


@contextlib.contextmanager
def _new_objects(fs: AbstractFileSystem, directory: str) -> Iterator[str]:
    """A write id for new data objects; if the block raises, the objects it wrote are deleted again."""
    write_id = cm.new_write_id()
    try:
        yield write_id
    except BaseException:
        with contextlib.suppress(Exception):
            cm.sweep(fs, directory, (), prefix=f"part-{write_id}-")
        raise


def _commit_new_version(fs: AbstractFileSystem, directory: str, table: pa.Table, cols: list[str]) -> None:
    """Object-store write of a whole table: unique data objects, metadata, the record, then the old objects go."""
    remove_stale_temps(fs, directory)
    with cm.table_lock(fs, directory), _new_objects(fs, directory) as write_id:
        files = _write_files(fs, directory, table, cols, f"part-{write_id}-{{i}}.parquet")
        _write_meta(fs, directory, table.schema, cols)
        commit = cm.Commit(tuple(files), tuple(cols), table.schema.remove_metadata(), write_id)
        cm.publish(fs, directory, commit)
    cm.sweep(fs, directory, commit.files)


def append_dataset(fs: AbstractFileSystem, directory: str, name: str, data: Any) -> None:
    """Add `data` to an existing dataset as new uniquely named files.

    The rows are validated against the schema the dataset was written with. Local disk: each new file appears
    whole or not at all (an append that spans several partitions is not atomic as a whole). Object stores: the
    files join the table together, by one update of its commit record.
    """
    schema, cols = read_meta(fs, directory)
    table = conform(name, data, schema)
    if cm.uses_record(fs):
        with _new_objects(fs, directory) as write_id:
            files = _write_files(fs, directory, table, cols, f"part-{write_id}-{{i}}.parquet")
            cm.add_files(fs, directory, files, write_id)
        return
    staging = temp_name(directory, "append")
    try:
        _write_files(fs, staging, table, cols, f"part-{uuid.uuid4().hex[:12]}-{{i}}.parquet")
        for src in fs.find(staging):
            dst = posixpath.join(directory, posixpath.relpath(src, staging))
            fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            os.replace(src, dst)
    finally:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)


def write_part(fs: AbstractFileSystem, directory: str, relpath: str, data: bytes) -> None:
    """Add (or rewrite with the same content) one Parquet file at `relpath` of an existing table.

    Local disk: a temporary name and a rename. Object stores: one PUT, then the file joins the commit record.
    """
    path = posixpath.join(directory, relpath)
    if not cm.uses_record(fs):
        atomic_write_bytes(fs, path, data)
        return
    fs.pipe_file(path, data)
    cm.add_files(fs, directory, [cm.relative(directory, path)], cm.new_write_id())


def part_exists(fs: AbstractFileSystem, directory: str, relpath: str) -> bool:
    """True when the file at `relpath` is part of the table (on object stores: listed by its commit record)."""
    commit = cm.read_commit(fs, directory)
    if commit is None:
        return fs.exists(posixpath.join(directory, relpath))
    return posixpath.normpath(relpath) in commit.files


def dataset_source(fs: AbstractFileSystem, directory: str) -> str | list[str]:
    """What a dataset reader should open: the table's committed files where it has a commit record, else its
    directory (paths on `fs`, no protocol)."""
    files = cm.committed_files(fs, directory)
    return directory if files is None else files


def read_dataset(
    fs: AbstractFileSystem, directory: str, name: str, filters: Any = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Read a dataset into pandas with the written (or declared) schema.

    `filters` is a pyarrow expression or pandas-style DNF, e.g. `[("seq_len", "=", 512)]`. Where the table has a
    commit record only its committed files are read; a file deleted under us by a newer commit is retried once.
    """
    try:
        return _read_dataset(fs, directory, name, filters, columns)
    except FileNotFoundError:
        if not cm.uses_record(fs):
            raise
        return _read_dataset(fs, directory, name, filters, columns)


def _read_dataset(
    fs: AbstractFileSystem, directory: str, name: str, filters: Any, columns: list[str] | None
) -> pd.DataFrame:
    commit = cm.read_commit(fs, directory)
    if commit is None:
        (schema, cols), source, base = read_meta(fs, directory), directory, {}
    else:
        schema, cols = commit.schema, list(commit.partition_cols)
        source = [posixpath.join(directory, f) for f in commit.files]
        base = {"partition_base_dir": directory}
    schema = schema or SCHEMAS.get(name)
    partitioning = _partitioning(schema, cols) if schema is not None and cols else "hive"
    dataset = ds.dataset(
        source, schema=schema, format="parquet", filesystem=arrow_fs(fs), partitioning=partitioning, **base
    )
    if columns is not None:
        unknown = [c for c in columns if c not in dataset.schema.names]
        if unknown:
            raise ValueError(f"table {name!r} has no columns {unknown}; it has {dataset.schema.names}")
    if filters is not None and not isinstance(filters, ds.Expression):
        filters = pq.filters_to_expression(filters)
    return dataset.to_table(columns=columns, filter=filters).to_pandas()
