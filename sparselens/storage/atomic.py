"""Writes that never leave a half-written file or directory in place of a good one.

Local disk: every helper writes under a hidden temporary name in the destination's own directory and then renames
it into place; the data is flushed and fsynced first and the rename is `os.replace`, which is atomic on POSIX; a
directory that already exists is swapped with `renameat2(RENAME_EXCHANGE)` where the kernel offers it.

Object stores (s3, gcs, azure, memory) have no rename, but one object is written by one PUT that appears whole
or not at all, so a single file is written in place. Tables (many objects) are published by a commit record
instead of a rename: see storage/commit.py. Other fsspec filesystems write a temporary name and `fs.mv` it.

Temporary names start with a dot, so pyarrow datasets and `RunStore.list_tables` ignore them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"})
_RENAME_EXCHANGE = 2  # linux/fs.h flag for renameat2: swap two existing paths atomically
_AT_FDCWD = -100  # "relative to the current directory" for the *at() syscalls; our paths are absolute anyway


def is_local(fs: AbstractFileSystem) -> bool:
    """True when `fs` is the local filesystem, where os-level renames and fsync are available."""
    return isinstance(fs, LocalFileSystem)


def is_object_store(fs: AbstractFileSystem) -> bool:
    """True for object stores, where one object is written atomically by one PUT and nothing can be renamed."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool(OBJECT_STORES.intersection(protocols))


def _fs(fs: AbstractFileSystem | None) -> AbstractFileSystem:
    return LocalFileSystem() if fs is None else fs


def temp_name(path: str, kind: str = "tmp") -> str:
    """A hidden sibling of `path` that no other writer will pick: `<dir>/.<name>.<kind>-<uuid>`."""
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}.{kind}-{uuid.uuid4().hex[:12]}")


def _fsync_dir(directory: str) -> None:
    """Persist a rename by fsyncing the directory that holds it (best effort; not every OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(fs: AbstractFileSystem, path: str, recursive: bool = False) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.rm(path, recursive=recursive)


def atomic_write_bytes(fs: AbstractFileSystem | None, path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one.

    `fs` is an fsspec filesystem (None means local); `path` is a path on it (no protocol). Parent directories are
    created. On failure the temporary file is removed and the old file, if any, is left untouched.
    """
    fs = _fs(fs)
    if is_object_store(fs):
        fs.pipe_file(path, data)  # one PUT: the old object or the whole new one, never a part
        return
    parent = posixpath.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = temp_name(path)
    try:
        if is_local(fs):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(parent)
        else:
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp)
        raise


def atomic_write_text(fs: AbstractFileSystem | None, path: str, text: str, encoding: str = "utf-8") -> None:
    """`atomic_write_bytes` for text."""
    atomic_write_bytes(fs, path, text.encode(encoding))


def json_default(obj: Any) -> Any:
    """Make configs JSON-friendly: dataclasses, pydantic models, paths, numpy scalars, sets; else `str(obj)`."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return str(obj)


def atomic_write_json(fs: AbstractFileSystem | None, path: str, obj: Any, indent: int = 2) -> None:
    """Write `obj` as indented JSON (see `json_default` for the non-JSON types accepted)."""
    atomic_write_text(fs, path, json.dumps(obj, indent=indent, default=json_default) + "\n")


def atomic_torch_save(fs: AbstractFileSystem | None, path: str, obj: Any) -> None:
    """`torch.save(obj)` into memory, then `atomic_write_bytes`, so a crash mid-save never truncates `path`."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(fs, path, buf.getvalue())


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two existing local paths with renameat2; False where the kernel or filesystem can't."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, f"renameat2 could not swap {a} and {b}: {os.strerror(err)}")


def _fsync_tree(root: str) -> None:
    """fsync every file under a local directory so its rename never publishes empty files after a power cut."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def replace_directory(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Move directory `src` to `dst`, replacing any existing `dst` as atomically as `fs` allows.

    Local: a plain rename when `dst` is absent, otherwise an atomic swap (renameat2) and removal of the old tree;
    where swapping is unsupported, the old tree is renamed aside first (readers may see no `dst` for an instant,
    never a mixture). Other filesystems: the same rename-aside sequence with `fs.mv`, file by file (on object
    stores a "move" is a copy and a delete per object, so this is NOT atomic there: publish data that readers
    must see whole as a table, whose commit record makes it atomic; see storage/commit.py).
    """
    if is_local(fs):
        if not os.path.exists(dst):
            os.rename(src, dst)
        elif _exchange(src, dst):
            _remove_quietly(fs, src, recursive=True)
        else:
            old = temp_name(dst, "old")
            os.rename(dst, old)
            os.rename(src, dst)
            _remove_quietly(fs, old, recursive=True)
        _fsync_dir(posixpath.dirname(dst))
        return
    old = None
    if fs.exists(dst):
        old = temp_name(dst, "old")
        _move_tree(fs, dst, old)
    _move_tree(fs, src, dst)
    if old is not None:
        _remove_quietly(fs, old, recursive=True)


def _move_tree(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Move every file under `src` to the same place under `dst` (object stores have no directories to move)."""
    for path in fs.find(src):
        rel = posixpath.relpath("/" + path.lstrip("/"), "/" + src.strip("/"))
        fs.mv(path, posixpath.join(dst, rel))
    _remove_quietly(fs, src, recursive=True)


def remove_stale_temps(fs: AbstractFileSystem, path: str) -> list[str]:
    """Delete leftovers of interrupted writes to `path` (`.<name>.tmp-*`, `.<name>.old-*`); return what went.

    Only call this where a single writer owns `path`: it would also delete another writer's in-progress temp.
    """
    parent, name = posixpath.split(path.rstrip("/"))
    if not fs.isdir(parent):
        return []
    prefixes = (f".{name}.tmp-", f".{name}.old-")
    stale = [p for p in fs.ls(parent, detail=False) if posixpath.basename(p.rstrip("/")).startswith(prefixes)]
    for p in stale:
        _remove_quietly(fs, p, recursive=True)
    return stale


@contextlib.contextmanager
def atomic_directory(fs: AbstractFileSystem | None, path: str) -> Iterator[str]:
    """Build a directory under a hidden temporary name and publish it at `path` only if the block succeeds.

    Yields the temporary directory's path (on `fs`, no protocol); write everything into it. On normal exit it
    replaces `path` (see `replace_directory`); on an exception it is deleted and `path` is untouched. Leftovers
    from earlier interrupted writes to the same `path` are removed first, so use one writer per `path`.

        with atomic_directory(fs, "/runs/r1/tables/eval_loss") as tmp:
            pq.write_table(table, f"{tmp}/part-0.parquet")
    """
    fs = _fs(fs)
    path = path.rstrip("/")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    remove_stale_temps(fs, path)
    tmp = temp_name(path)
    fs.makedirs(tmp, exist_ok=True)
    try:
        yield tmp
        if is_local(fs):
            _fsync_tree(tmp)
        replace_directory(fs, tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp, recursive=True)
        raise
