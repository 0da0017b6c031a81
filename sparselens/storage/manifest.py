"""The run manifest: resolved config, package versions, git commit, and per-phase status."""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PHASE_STATUSES = ("running", "completed", "failed")
_PACKAGES = (
    "sparselens",
    "torch",
    "triton",
    "prefect",
    "prefect-dask",
    "dask",
    "pyarrow",
    "pandas",
    "numpy",
    "fsspec",
    "s3fs",
    "scikit-learn",
    "altair",
)


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Installed versions of python and the packages results depend on (None if not installed); imports none."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(cwd: str | Path | None = None) -> dict[str, Any]:
    """{"git_commit": HEAD sha or None, "git_dirty": uncommitted changes? or None} of the source checkout.

    By default the checkout holding the sparselens package is asked (that is the code that ran), falling back to
    the working directory; outside a git checkout, or without git, both values are None.
    """
    candidates = [Path(cwd)] if cwd is not None else [Path(__file__).resolve().parent, Path.cwd()]
    for where in candidates:
        commit = _git("rev-parse", "HEAD", cwd=where)
        if commit:
            status = _git("status", "--porcelain", "--untracked-files=no", cwd=where)
            return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}
    return {"git_commit": None, "git_dirty": None}


def to_jsonable(config: Any) -> dict:
    """A config (dict, dataclass or pydantic model) as plain JSON types, so the manifest shows what ran."""
    from sparselens.storage.atomic import json_default

    if not isinstance(config, dict):
        config = json_default(config)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, dataclass or pydantic model, got {type(config).__name__}")
    return json.loads(json.dumps(config, default=json_default))


def new_manifest(run_id: str, config: Any, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fresh manifest for `run_id`; `fields`: extra top-level JSON entries."""
    return {
        "run_id": run_id,
        "created_at": now_iso(),
        "config": to_jsonable(config),
        **to_jsonable(fields or {}),
        "versions": package_versions(),
        **git_info(),
        "phases": {},
    }


def refresh_manifest(old: dict[str, Any], config: Any, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """An existing run re-created: new config, versions and commit; created_at and phase history kept."""
    fresh = new_manifest(old.get("run_id", ""), config, fields)
    fresh["created_at"] = old.get("created_at", fresh["created_at"])
    fresh["updated_at"] = now_iso()
    fresh["phases"] = old.get("phases", {})
    return fresh


def phase_entry(old: dict[str, Any] | None, status: str, seconds: float | None, extra: dict) -> dict[str, Any]:
    """The manifest entry of a phase after a status change; `started_at` is set when it enters `running`."""
    if status not in PHASE_STATUSES:
        raise ValueError(f"phase status must be one of {PHASE_STATUSES}, got {status!r}")
    entry = dict(old or {})
    entry.update(extra)
    entry["status"] = status
    entry["updated_at"] = now_iso()
    if status == "running":
        entry["started_at"] = entry["updated_at"]
        entry.pop("seconds", None)
        entry.pop("error", None)
    if seconds is not None:
        entry["seconds"] = round(float(seconds), 3)
    return entry
