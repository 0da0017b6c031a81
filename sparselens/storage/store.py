"""`RunStore`: everything one run writes, under `<root>/runs/<run_id>/`, on any fsspec filesystem.

    runs/<run_id>/
      manifest.json                 resolved config, package versions, git commit, phase status
      tables/<name>/                Parquet datasets (schemas in storage/schemas.py)
      checkpoints/<model>/<stage>/  step_000123.pt, the newest few kept for resuming
      models/<name>.pt              final models: {"cfg": asdict(ModelConfig), "state_dict", model/config class}
      charts/  report.html          figures and the report

Every write is atomic (see storage/atomic.py), so a phase that dies half-way never leaves a damaged file behind.
On local disk tables are published by renaming a temporary directory; on object stores (`s3://bucket/prefix`,
which cannot rename) by a `_SUCCESS` commit record written after the data objects, and readers read only what
it lists (see storage/commit.py). An object-store root is configured the way its users already configure that
store: s3fs takes the endpoint and credentials from the standard environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, or a profile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from sparselens.storage import checkpoints as ckpt
from sparselens.storage import commit as cm
from sparselens.storage import manifest as mf
from sparselens.storage import tables
from sparselens.storage.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    is_local,
    is_object_store,
)
from sparselens.storage.errors import ModelNotFoundError, RunNotFoundError, TableNotFoundError
from sparselens.storage.schemas import is_snake_case

DEFAULT_ROOT = "sparselens-data"
CHAMPION, CHAMPION_FILE = "champion", "champion.json"  # Phase 4's choice, by name, in the run directory
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MANIFEST_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} {name!r} is not a valid name: use letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit"
        )
    return name


def _display(fs: AbstractFileSystem, path: str) -> str:
    """A path as the user would type it: plain for local disk, a URL otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _subdirs(fs: AbstractFileSystem, directory: str) -> list[str]:
    if not fs.isdir(directory):
        return []
    entries = fs.ls(directory, detail=True)
    names = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"]
    return sorted(n for n in names if not n.startswith((".", "_")))


def open_root(root_or_url: str | os.PathLike) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path) of a store root. Remote object stores are opened without fsspec's listing cache: other
    processes (Dask workers, a resumed run) write to the same prefix, and a stale listing would hide their files."""
    url = os.fspath(root_or_url)
    try:
        fs, path = url_to_fs(url)
    except ImportError as e:
        extra = " (pip install 'sparselens[s3]')" if url.startswith(("s3://", "s3a://")) else ""
        raise ImportError(f"run store root {url!r} needs a filesystem package that is not installed{extra}: {e}") from e
    if is_object_store(fs) and "memory" not in fs.protocol:
        fs, path = url_to_fs(url, use_listings_cache=False)
    return fs, path


def list_runs(root: str | os.PathLike) -> list[str]:
    """Ids of the runs (directories with a manifest.json) under `<root>/runs/`, sorted."""
    fs, path = open_root(root)
    runs_dir = posixpath.join(path, "runs")
    return [r for r in _subdirs(fs, runs_dir) if fs.exists(posixpath.join(runs_dir, r, "manifest.json"))]


class RunStore:
    """The files of run `run_id` under `root_or_url` (a local path or an fsspec URL such as `memory://x`)."""

    def __init__(self, root_or_url: str | os.PathLike, run_id: str, builder: ckpt.ModelBuilder | None = None) -> None:
        self.run_id = _check_name("run_id", run_id)
        self.builder = builder  # rebuilds models in load_model; None: the model class each file names
        self.fs, root = open_root(root_or_url)
        self.root = root.rstrip("/") or "/"
        self.run_dir = posixpath.join(self.root, "runs", run_id)

    def __repr__(self) -> str:
        return f"RunStore({_display(self.fs, self.root)!r}, {self.run_id!r})"

    def _p(self, *parts: str) -> str:
        """Path on `self.fs` (no protocol) of `parts` under the run directory; refuses to leave it."""
        rel = posixpath.normpath(posixpath.join(*parts)) if parts else "."
        if rel.startswith("/") or rel == ".." or rel.startswith("../"):
            raise ValueError(f"path {posixpath.join(*parts)!r} must be relative and stay inside the run directory")
        return self.run_dir if rel == "." else posixpath.join(self.run_dir, rel)

    def path(self, *parts: str) -> str:
        """Path under the run directory: a plain path on local disk, a full URL on other filesystems."""
        return _display(self.fs, self._p(*parts))

    @property
    def url(self) -> str:
        """The run directory as an fsspec URL (`file:///...`, `memory:///...`)."""
        return self.fs.unstrip_protocol(self.run_dir)

    def exists(self) -> bool:
        """True once `create` has written the run's manifest."""
        return self.fs.exists(self._p("manifest.json"))

    def create(self, config: Any, exist_ok: bool = True, **fields: Any) -> None:
        """Write the manifest: resolved `config` (dict, dataclass or pydantic), versions, git commit, phases {},
        and any extra JSON `fields` (e.g. `created_with`: the preset name and overrides the config came from).

        Re-creating an existing run (when `exist_ok`) replaces config, versions and commit but keeps `created_at`
        and the phase history, so a resumed run records what it resumed with.
        """
        with self._manifest_lock():
            if self.exists():
                if not exist_ok:
                    raise FileExistsError(
                        f"run {self.run_id!r} already exists at {self.path()}; pick another "
                        f"--run-id or delete that directory"
                    )
                manifest = mf.refresh_manifest(self._load_manifest(), config, fields)
            else:
                manifest = mf.new_manifest(self.run_id, config, fields)
            atomic_write_json(self.fs, self._p("manifest.json"), manifest)

    def require_exists(self) -> None:
        """Raise RunNotFoundError, saying how to create the run and which runs exist, unless it exists."""
        if self.exists():
            return
        root = _display(self.fs, self.root)
        command = f"sparselens run --preset quick --run-id {self.run_id}"
        if posixpath.basename(self.root) != DEFAULT_ROOT:
            command += f" --root {root}"
        others = list_runs(self.fs.unstrip_protocol(self.root))
        listing = f"Existing runs there: {', '.join(others)}." if others else "There are no runs there yet."
        raise RunNotFoundError(
            f"run {self.run_id!r} not found under {root} (no {self.path('manifest.json')}). "
            f"Run `{command}` first to create it. {listing}"
        )

    def read_manifest(self) -> dict[str, Any]:
        """The run's manifest as a dict (see storage/manifest.py for its keys)."""
        self.require_exists()
        return self._load_manifest()

    def _load_manifest(self) -> dict[str, Any]:
        return json.loads(self.fs.cat_file(self._p("manifest.json")))

    def update_phase(self, phase: str, status: str, seconds: float | None = None, **extra: Any) -> dict[str, Any]:
        """Record `phase`'s status ('running' | 'completed' | 'failed'), duration and any extra JSON fields.

        A locked, atomic read-modify-write of manifest.json (the lock covers threads, and processes on local
        disk). Returns the phase's new entry.
        """
        with self._manifest_lock():
            manifest = self.read_manifest()
            phases = manifest.setdefault("phases", {})
            phases[phase] = mf.phase_entry(phases.get(phase), status, seconds, extra)
            atomic_write_json(self.fs, self._p("manifest.json"), manifest)
            return phases[phase]

    @contextlib.contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        with _LOCKS_GUARD:
            lock = _MANIFEST_LOCKS.setdefault(self.url, threading.Lock())
        with lock:
            if not is_local(self.fs):
                yield
                return
            import fcntl

            self.fs.makedirs(self.run_dir, exist_ok=True)
            with open(self._p(".manifest.lock"), "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    def table_path(self, name: str) -> str:
        """Where table `name`'s Parquet dataset lives (plain path locally, URL otherwise)."""
        return self.path("tables", self._table(name))

    def _table(self, name: str) -> str:
        if not is_snake_case(name):
            raise ValueError(f"table name {name!r} is not snake_case; use lowercase letters, digits and underscores")
        return name

    def table_exists(self, name: str) -> bool:
        """True when table `name` has been written (on object stores: committed)."""
        directory = self._p("tables", self._table(name))
        if cm.uses_record(self.fs):
            return self.fs.exists(posixpath.join(directory, cm.RECORD))
        return self.fs.isdir(directory)

    def list_tables(self) -> list[str]:
        """Names of the tables written so far, sorted."""
        names = _subdirs(self.fs, self._p("tables"))
        return [n for n in names if self.table_exists(n)] if cm.uses_record(self.fs) else names

    def table_files(self, name: str) -> list[str]:
        """The data files of table `name` as paths (local) or URLs: exactly the committed ones, for reading the
        table with any engine (`pd.read_parquet`, `duckdb.read_parquet`, `polars.scan_parquet`, ...)."""
        self._require_table(name)
        directory = self._p("tables", name)
        files = cm.committed_files(self.fs, directory)
        if files is None:
            files = sorted(p for p in self.fs.find(directory) if p.endswith(".parquet") and "/." not in p)
        return [_display(self.fs, p) for p in files]

    def table_source(self, name: str) -> str | list[str]:
        """What `dask.dataframe.read_parquet` should open for table `name`: its directory where a listing shows
        exactly the table (local disk), else its committed files (object stores; the directory if there are none)."""
        source = tables.dataset_source(self.fs, self._p("tables", self._table(name)))
        if isinstance(source, str) or not source:
            return self.table_path(name)
        return [_display(self.fs, p) for p in source]

    def write_part(self, path: str, data: bytes) -> None:
        """Add one Parquet file at `path` (on `self.fs`, inside `tables/<name>/`) to an existing table, atomically;
        on object stores it joins the table's commit record after its PUT."""
        directory, rel = self._split_table_path(path)
        tables.write_part(self.fs, directory, rel, data)

    def part_exists(self, path: str) -> bool:
        """True when the file at `path` (inside `tables/<name>/`) is part of its table (committed)."""
        directory, rel = self._split_table_path(path)
        return tables.part_exists(self.fs, directory, rel)

    def delete_table(self, name: str) -> None:
        """Delete table `name` (its commit record first on object stores, so it disappears in one step)."""
        directory = self._p("tables", self._table(name))
        if cm.uses_record(self.fs):
            cm.drop(self.fs, directory)
        elif self.fs.exists(directory):
            self.fs.rm(directory, recursive=True)

    def _split_table_path(self, path: str) -> tuple[str, str]:
        tables_dir = self._p("tables")
        rel = cm.relative(tables_dir, path)
        name, _, inside = rel.partition("/")
        if not inside:
            raise ValueError(f"{path} is not a file inside a table directory under {tables_dir}")
        return posixpath.join(tables_dir, self._table(name)), inside

    def _require_table(self, name: str) -> None:
        if not self.table_exists(name):
            self.require_exists()
            have = self.list_tables()
            raise TableNotFoundError(
                f"run {self.run_id!r} has no table {name!r} (looked in {self.table_path(name)});"
                f" existing tables: {have or 'none'}. Run the phase that writes it first."
            )

    def write_table(self, name: str, df_or_arrow: Any, partition_cols: list[str] | None = None) -> str:
        """Validate against `SCHEMAS[name]` (when declared) and write the whole table atomically; return its path.

        Writes zstd Parquet under a temporary directory and renames it into place, replacing any previous
        version of the table in one step. `partition_cols` gives hive partitions (`seq_len=512/`).
        """
        tables.write_dataset(self.fs, self._p("tables", self._table(name)), name, df_or_arrow, partition_cols)
        return self.table_path(name)

    def append_table(self, name: str, df_or_arrow: Any, partition_cols: list[str] | None = None) -> str:
        """Add rows to table `name` as new files (each appears atomically); create the table if it is missing.

        The rows must match the schema the table was written with; the table keeps its original partitioning.
        """
        if not self.table_exists(name):
            return self.write_table(name, df_or_arrow, partition_cols)
        tables.append_dataset(self.fs, self._p("tables", name), name, df_or_arrow)
        return self.table_path(name)

    def read_table(self, name: str, filters: Any = None, columns: list[str] | None = None) -> pd.DataFrame:
        """Table `name` as a DataFrame with its declared types; `filters` as pyarrow expression or DNF tuples."""
        self._require_table(name)
        return tables.read_dataset(self.fs, self._p("tables", name), name, filters, columns)

    def checkpoint_dir(self, model: str, stage: str) -> str:
        """Directory (on `self.fs`) of `model`'s checkpoints for training stage `stage`."""
        return self._p("checkpoints", _check_name("model", model), _check_name("stage", stage))

    def save_checkpoint(self, model: str, stage: str, step: int, state: dict, keep: int = 2) -> str:
        """Save `state` as `checkpoints/<model>/<stage>/step_<step:06d>.pt` atomically, keeping the newest `keep`."""
        return _display(self.fs, ckpt.save_checkpoint(self.fs, self.checkpoint_dir(model, stage), step, state, keep))

    def checkpoint_steps(self, model: str, stage: str) -> list[int]:
        """Steps of the checkpoints kept for `model`/`stage`, ascending."""
        return ckpt.checkpoint_steps(self.fs, self.checkpoint_dir(model, stage))

    def latest_checkpoint(self, model: str, stage: str, map_location: Any = "cpu") -> tuple[int, dict] | None:
        """(step, state) of the newest checkpoint of `model`/`stage`, or None; CorruptCheckpointError if damaged."""
        return ckpt.load_latest(self.fs, self.checkpoint_dir(model, stage), map_location)

    def clear_checkpoints(self, model: str, stage: str | None = None) -> None:
        """Delete `model`'s checkpoints for `stage` (all stages when None), so the stage restarts from scratch."""
        path = self.checkpoint_dir(model, stage) if stage else self._p("checkpoints", _check_name("model", model))
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _model_path(self, name: str) -> str:
        return self._p("models", f"{_check_name('model', name)}.pt")

    def has_model(self, name: str) -> bool:
        """True when final model `name` has been saved."""
        return self.fs.exists(self._model_path(name))

    def model_digest(self, name: str) -> str:
        """sha256 of saved model `name`'s file: its identity (a retrained or rebuilt model has another)."""
        path = self._model_path(name)
        if not self.fs.exists(path):
            raise ModelNotFoundError(f"run {self.run_id!r} has no saved model {name!r} ({_display(self.fs, path)})")
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def list_models(self) -> list[str]:
        """Names of the saved final models, sorted."""
        directory = self._p("models")
        if not self.fs.isdir(directory):
            return []
        names = (posixpath.basename(p) for p in self.fs.ls(directory, detail=False))
        return sorted(n[:-3] for n in names if n.endswith(".pt") and not n.startswith("."))

    def save_model(self, name: str, model: Any) -> str:
        """Save `{"cfg": asdict(model.cfg), "state_dict": ...}` at `models/<name>.pt` atomically; return its path."""
        path = self._model_path(name)
        atomic_torch_save(self.fs, path, ckpt.model_payload(model))
        return _display(self.fs, path)

    def champion_name(self) -> str:
        """The model Phase 4 chose (`champion.json`, written by the benchmark phase)."""
        path = self._p(CHAMPION_FILE)
        if not self.fs.exists(path):
            self.require_exists()
            raise ModelNotFoundError(
                f"run {self.run_id!r} has no champion yet (no {_display(self.fs, path)}); run "
                f"`sparselens phase benchmark --run-id {self.run_id}` first"
            )
        return json.loads(self.fs.cat_file(path))["champion"]

    def load_model(self, name: str, map_location: Any = "cpu") -> Any:
        """Saved model `name` in eval mode, with its weights: built by the store's `builder` (the saved config dict
        -> a fresh model) or, by default, as the model class its file names (`model_type(config_type(**cfg))`).
        `"champion"` loads the model named in `champion.json` (Phase 4's choice)."""
        if name == CHAMPION:
            name = self.champion_name()
        path = self._model_path(name)
        if not self.fs.exists(path):
            self.require_exists()
            raise ModelNotFoundError(
                f"run {self.run_id!r} has no saved model {name!r} ({_display(self.fs, path)}); "
                f"saved models: {self.list_models() or 'none'}. Run the phase that trains or "
                f"builds it first (e.g. `sparselens phase train --run-id {self.run_id}`)."
            )
        remedy = "Delete it and re-run the phase that saves it."
        payload = ckpt.load_torch_file(self.fs, path, map_location, what="model file", remedy=remedy)
        return ckpt.build_from_payload(payload, _display(self.fs, path), self.builder)

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Atomically write `data` at `relpath` under the run directory; return the path."""
        path = self._p(relpath)
        atomic_write_bytes(self.fs, path, data)
        return _display(self.fs, path)

    def write_text(self, relpath: str, text: str) -> str:
        """Atomically write UTF-8 `text` at `relpath` under the run directory; return the path."""
        return self.write_bytes(relpath, text.encode("utf-8"))

    def read_bytes(self, relpath: str) -> bytes:
        """Contents of `relpath` under the run directory."""
        return self.fs.cat_file(self._p(relpath))

    def read_text(self, relpath: str) -> str:
        """UTF-8 contents of `relpath` under the run directory."""
        return self.read_bytes(relpath).decode("utf-8")
