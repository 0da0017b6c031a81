"""Helpers for the servers the tests start in their own processes (S3, Dask, Prefect): ports, waiting, stopping.

Every process is started with `start_new_session=True` and stopped by its PID's process group, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started with start_new_session=True, and its children, by its PID."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent (a worker after its nanny)


def wait_until(ready: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `ready()` until it is true; TimeoutError naming `what`, or RuntimeError if `proc` exits first."""
    deadline = time.time() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.time() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout} s")
        time.sleep(0.1)
