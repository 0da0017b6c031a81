"""Run store: directory layout, Parquet schemas, atomic table/checkpoint/model writes and the run manifest.

No Prefect here; tasks and flows call into this package.
"""

from sparselens.storage.atomic import (
    atomic_directory,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from sparselens.storage.errors import CorruptCheckpointError, ModelNotFoundError, RunNotFoundError, TableNotFoundError
from sparselens.storage.schemas import SCHEMAS, register_schema
from sparselens.storage.store import DEFAULT_ROOT, RunStore, list_runs

__all__ = [
    "DEFAULT_ROOT",
    "SCHEMAS",
    "CorruptCheckpointError",
    "ModelNotFoundError",
    "RunNotFoundError",
    "RunStore",
    "TableNotFoundError",
    "atomic_directory",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "list_runs",
    "register_schema",
]
