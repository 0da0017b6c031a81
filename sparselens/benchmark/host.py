"""The machine a timing was taken on: CPU model, cores, torch threads and torch version, and a short fingerprint
of them, so timings are only ever compared with timings from the same kind of host and setting."""

from __future__ import annotations

import hashlib
import os
import platform

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_info(threads: int | None = None) -> dict[str, str | int]:
    """cpu_model, cores, threads (torch intra-op threads in force, or `threads`), torch_version, python_version."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def fingerprint(info: dict[str, str | int]) -> str:
    """12 hex digits identifying (cpu_model, cores, threads, torch_version)."""
    key = "|".join(str(info[k]) for k in ("cpu_model", "cores", "threads", "torch_version"))
    return hashlib.sha256(key.encode()).hexdigest()[:12]
