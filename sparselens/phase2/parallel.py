"""Dask plumbing for Phase 2: a client on a fresh LocalCluster or an existing cluster, and map/compute helpers.

Workers run plain library functions (no Prefect). Each worker is one process with one thread and single-threaded
BLAS/OpenMP/torch, so n workers use n cores and per-group numpy work scales with them. When the caller has a
Prefect API (PREFECT_API_URL), LocalCluster workers get the same URL in their environment, so anything on them
that talks to Prefect reports to the flow's server instead of starting an ephemeral one.

Workers of an existing cluster (``address``) keep their own environment: start them with WORKER_ENV set (e.g.
``MALLOC_TRIM_THRESHOLD_=134217728 MALLOC_MMAP_THRESHOLD_=33554432 OMP_NUM_THREADS=1 dask worker ...``).

`client=None` everywhere means "no cluster": collections compute with Dask's synchronous scheduler and maps run
in a loop, which is what unit tests use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask

WORKER_ENV = {
    "OMP_NUM_THREADS": "1",  # one core per worker process
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads starve the other worker on a small machine
    # Dask's nanny default MALLOC_TRIM_THRESHOLD_=65536 also freezes glibc's mmap threshold at 128 KiB, so every
    # map-sized numpy/torch temporary is a fresh mmap + page faults: Phase 2 ran 2x slower on the workers. Keep
    # allocations below 32 MiB on the heap and return memory to the OS only above 128 MiB free.
    "MALLOC_MMAP_THRESHOLD_": str(2**25),
    "MALLOC_TRIM_THRESHOLD_": str(2**27),
}


def worker_env() -> dict[str, str]:
    """Environment of LocalCluster workers: single-threaded maths, plus the caller's Prefect API URL if any."""
    env = dict(WORKER_ENV)
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int = 2) -> Iterator[Any]:
    """A distributed Client: connected to `address` (tcp://host:port of a running scheduler), or to a fresh
    LocalCluster of `n_workers` single-threaded worker processes that is shut down on exit."""
    if not address and n_workers < 1:
        raise ValueError(f"n_workers={n_workers} must be >= 1 (or pass the address of an existing cluster)")
    with cluster_address(address, n_workers) as where, connect(where) as client:
        yield client


@contextlib.contextmanager
def cluster_address(address: str | None = None, n_workers: int = 2) -> Iterator[str]:
    """The address of a Dask scheduler: `address` itself, or that of a fresh LocalCluster (closed on exit), so
    several callers (e.g. Prefect tasks) can each connect a client to one shared cluster."""
    if address:
        yield address
        return
    from distributed import LocalCluster

    env = worker_env()
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):  # set before the worker process starts
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, env=env
        )
    with cluster:
        yield cluster.scheduler_address


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A client connected to a running scheduler at `address`, closed on exit (the cluster keeps running)."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:  # never leave a global scheduler behind
        yield client


def compute(client: Any | None, *collections: Any) -> tuple:
    """Compute Dask collections on `client` (or synchronously in this process when None)."""
    if client is None:
        return dask.compute(*collections, scheduler="synchronous")
    return tuple(client.gather(client.compute(list(collections))))


def submit_map(client: Any | None, fn: Callable, items: Sequence, priority: int = 0, **kwargs: Any) -> list:
    """Submit `fn(item, **kwargs)` for every item; return futures (or, without a client, the results).

    A higher `priority` runs first: give it to long tasks, so the many short ones fill the workers at the end.
    """
    if client is None:
        return [fn(item, **kwargs) for item in items]
    return client.map(fn, items, pure=False, priority=priority, **kwargs)


def gather(client: Any | None, futures: list, progress: Callable[[int, int], None] | None = None) -> list:
    """Results of `submit_map` futures (a no-op without a client); `progress(done, total)` as each one finishes."""
    if client is None:
        if progress is not None:
            progress(len(futures), len(futures))
        return futures
    if progress is not None:
        from distributed import as_completed

        for done, _ in enumerate(as_completed(futures, loop=client.loop), 1):
            progress(done, len(futures))
    return client.gather(futures)


def n_workers(client: Any | None) -> int:
    """Workers of the cluster (1 without a client)."""
    return 1 if client is None else max(1, len(client.scheduler_info()["workers"]))
