"""How a table is published on a filesystem that cannot rename atomically (object stores: s3, gcs, azure, memory).

The protocol, for every table directory `tables/<name>/` that is not on local disk:

1. Data objects are written directly under the table directory with names no other write uses
   (`part-<write id>-<i>.parquet`, in hive `col=value/` folders); each object appears whole or not at all
   (an object-store PUT is atomic), but none of them is part of the table yet.
2. The commit record `_SUCCESS` (JSON: the files of the table, its schema and partition columns) is written
   last, in one PUT. That PUT is the commit: before it readers see the previous version, after it the new one.
3. Only then are objects that the record does not list deleted (the previous version's, and those of writes
   that died before their commit).

Readers read only the files the record lists (`committed_files`); a table without a record does not exist.
A write killed at any point therefore leaves the previous version readable and complete, and its orphans are
swept by the next write of that table. Glob readers (`pd.read_parquet(dir)`, DuckDB `**/*.parquet`) skip
`_SUCCESS` and `_common_metadata` and see exactly the committed objects whenever no write of the table is in
flight and none was killed since the last one; for a strict read, pass them `committed_files` instead.

Appends and single-file writes (capture chunks) add objects first and then rewrite the record with the new
files added. The record is a read-modify-write: one writer process per table (a lock covers threads).
Local disk keeps its own protocol (a hidden temporary directory, then a rename; see storage/atomic.py) and
has no record.
"""

from __future__ import annotations

import base64
import contextlib
import json
import posixpath
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from fsspec import AbstractFileSystem

from sparselens.storage.atomic import is_local
from sparselens.storage.manifest import now_iso

RECORD = "_SUCCESS"
FORMAT = "sparselens-commit/1"
_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


def uses_record(fs: AbstractFileSystem) -> bool:
    """True where tables are published by the commit record (everything but local disk)."""
    return not is_local(fs)


def new_write_id() -> str:
    """A write id for data object names (`part-<id>-<i>.parquet`): no two writes share one."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Commit:
    """One published version of a table: its data files (relative to the table directory) and how to read them."""

    files: tuple[str, ...]
    partition_cols: tuple[str, ...] = ()
    schema: pa.Schema | None = None
    write_id: str = ""
    committed_at: str = field(default_factory=now_iso)

    def to_json(self) -> str:
        schema = base64.b64encode(self.schema.serialize().to_pybytes()).decode() if self.schema is not None else None
        return json.dumps(
            {
                "format": FORMAT,
                "write_id": self.write_id,
                "committed_at": self.committed_at,
                "files": list(self.files),
                "partition_cols": list(self.partition_cols),
                "schema": schema,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> Commit:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(
                f"{where} is not a sparselens commit record (format {data.get('format')!r}, expected {FORMAT!r}); "
                f"delete that table and re-run the phase that writes it"
            )
        schema = data.get("schema")
        return cls(
            files=tuple(data["files"]),
            partition_cols=tuple(data.get("partition_cols", ())),
            schema=pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema))) if schema else None,
            write_id=data.get("write_id", ""),
            committed_at=data.get("committed_at", ""),
        )


def read_commit(fs: AbstractFileSystem, directory: str) -> Commit | None:
    """The table's current commit record, or None when it has none (local tables, never-committed tables)."""
    if not uses_record(fs):
        return None
    path = posixpath.join(directory, RECORD)
    try:
        text = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return Commit.from_json(text.decode("utf-8"), fs.unstrip_protocol(path))


def committed_files(fs: AbstractFileSystem, directory: str) -> list[str] | None:
    """Paths (on `fs`) of the table's committed data files, or None where the table has no record."""
    commit = read_commit(fs, directory)
    return None if commit is None else [posixpath.join(directory, f) for f in commit.files]


def relative(directory: str, path: str) -> str:
    """`path` relative to `directory` (both on one filesystem, no protocol)."""
    rel = posixpath.relpath("/" + path.lstrip("/"), "/" + directory.strip("/"))
    if rel.startswith(".."):
        raise ValueError(f"{path} is not inside the table directory {directory}")
    return rel


@contextlib.contextmanager
def table_lock(fs: AbstractFileSystem, directory: str) -> Iterator[None]:
    """Serialise record updates of one table within this process (the protocol allows one writer process)."""
    key = fs.unstrip_protocol(directory)
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        yield


def publish(fs: AbstractFileSystem, directory: str, commit: Commit) -> None:
    """Write the commit record: one PUT, the commit point of the write."""
    fs.pipe_file(posixpath.join(directory, RECORD), commit.to_json().encode("utf-8"))


def add_files(fs: AbstractFileSystem, directory: str, files: list[str], write_id: str) -> Commit:
    """Publish a new version of the table: the current record's files plus `files` (relative paths)."""
    with table_lock(fs, directory):
        old = read_commit(fs, directory)
        if old is None:
            raise FileNotFoundError(
                f"table {fs.unstrip_protocol(directory)} has no commit record to add files to; write the table first"
            )
        new_files = [f for f in files if f not in old.files]
        commit = Commit(old.files + tuple(new_files), old.partition_cols, old.schema, write_id)
        publish(fs, directory, commit)
        return commit


def data_objects(fs: AbstractFileSystem, directory: str) -> list[str]:
    """Relative paths of every object under the table directory except the record and metadata files."""
    if not fs.exists(directory):
        return []
    out = []
    for path in fs.find(directory):
        rel = relative(directory, path)
        if not posixpath.basename(rel).startswith(("_", ".")):
            out.append(rel)
    return out


def sweep(fs: AbstractFileSystem, directory: str, keep: tuple[str, ...] | list[str], prefix: str = "") -> list[str]:
    """Delete data objects the table does not list (`keep`), optionally only those whose name starts with
    `prefix`; return what went. Only after the commit (or to clean up a failed write's own objects)."""
    keep_set = set(keep)
    gone = [
        rel for rel in data_objects(fs, directory) if rel not in keep_set and posixpath.basename(rel).startswith(prefix)
    ]
    if gone:
        fs.rm([posixpath.join(directory, rel) for rel in gone])
    return gone


def drop(fs: AbstractFileSystem, directory: str) -> None:
    """Delete a table: the record first (the table is gone in one step), then its objects."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(posixpath.join(directory, RECORD))
    if fs.exists(directory):
        fs.rm(directory, recursive=True)
