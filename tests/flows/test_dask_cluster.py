"""Phase 2 on a Dask cluster started apart from the flow: `dask scheduler` and two `dask worker` processes.

`sparselens phase patterns --dask-address` must give the same phase2_* tables as a LocalCluster run, also when
one worker is killed while the phase runs (and then on a rerun with that worker gone).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
from engines import check_every_engine
from servers import free_port, stop_process_group, wait_until

from sparselens.phase2.parallel import WORKER_ENV, dask_client
from sparselens.phase2.run import run_phase2_tables
from sparselens.runs import phase_config
from sparselens.storage import RunStore

README = Path(__file__).resolve().parents[2] / "README.md"


class Cluster:
    """`dask scheduler` and `n` `dask worker` processes (nanny + worker each) on 127.0.0.1, started with the
    documented worker environment, each in its own process group, stopped by PID."""

    def __init__(self, logs: Path, n_workers: int = 2) -> None:
        from distributed import Client

        port = free_port()
        self.address, self.logs, self.procs = f"tcp://127.0.0.1:{port}", logs, []
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port)])
        self.workers = [
            self._start(f"worker-{i}", ["worker", self.address, "--nthreads", "1", "--host", "127.0.0.1"])
            for i in range(n_workers)
        ]
        self.client = Client(self.address, timeout="60s", set_as_default=False)
        wait_until(lambda: self.n_workers() == n_workers, f"{n_workers} dask workers", 120)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.logs / f"dask-{name}.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dask", *args, "--no-dashboard"],
                env=dict(os.environ, **WORKER_ENV),  # README, "Phase 2 on Dask"
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def busy_worker(self) -> subprocess.Popen | None:
        """The `dask worker` process (the nanny) of a worker that is running tasks right now, if any."""
        busy = [address for address, keys in self.client.processing().items() if keys]
        if not busy:
            return None
        pids = self.client.run(os.getpid, workers=busy[:1])  # {address: worker process id}
        nanny = psutil.Process(next(iter(pids.values()))).ppid()
        return next((p for p in self.workers if p.pid == nanny), None)

    def stop(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            stop_process_group(proc)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def phase2_tables(store: RunStore) -> dict[str, pd.DataFrame]:
    """Every phase2_* table but the chart listing, rows in a canonical order."""
    out = {}
    for name in store.list_tables():
        if name.startswith("phase2_") and name != "phase2_charts":
            df = store.read_table(name)
            keys = [c for c in df.columns if not pd.api.types.is_float_dtype(df[c])]
            out[name] = df.sort_values(keys).reset_index(drop=True)
    return out


def assert_same_tables(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert sorted(got) == sorted(want)
    for name, frame in want.items():
        pd.testing.assert_frame_equal(got[name], frame, check_exact=False, rtol=1e-6, atol=1e-9, obj=name)


@pytest.mark.slow
def test_patterns_on_a_separate_cluster_match_a_local_cluster_and_survive_a_killed_worker(
    cluster, cli, untrained_run, tmp_path
):
    reference = untrained_run(str(tmp_path / "local"), "cl")
    shutil.copytree(reference.run_dir, tmp_path / "cluster/runs/cl")
    store = RunStore(str(tmp_path / "cluster"), "cl")  # the same models and capture
    with dask_client(None, n_workers=2) as client:  # what `sparselens phase patterns` does without an address
        run_phase2_tables(reference, phase_config(reference, "patterns"), client)
    want = phase2_tables(reference)
    assert len(want) >= 10 and not phase2_tables(store)

    args = ("phase", "patterns", "--run-id", "cl", "--root", store.root, "--dask-address", cluster.address)
    proc, log = cli.start(*args)
    try:
        victim = []
        wait_until(
            lambda: victim.append(cluster.busy_worker()) or victim[-1] or proc.poll() is not None,
            "a worker running a task of the phase",
            300,
        )
        assert proc.poll() is None, "the phase ended before a worker could be killed:\n" + log.read_text()
        os.killpg(victim[-1].pid, signal.SIGKILL)  # nanny and worker process, in the middle of the phase
        wait_until(lambda: cluster.n_workers() == 1, "the scheduler noticing the dead worker", 60)
        code = proc.wait(timeout=600)
    finally:
        stop_process_group(proc)
    output = log.read_text()
    if code == 0:  # the scheduler reran the dead worker's tasks on the other one
        assert_same_tables(phase2_tables(store), want)
        assert store.read_manifest()["phases"]["patterns"]["status"] == "completed"
    else:  # or the phase stops, saying a worker died
        assert "KilledWorker" in output or "died" in output, output[-3000:]
        assert store.read_manifest()["phases"]["patterns"]["status"] == "failed"

    code, output = cli.run(*args)  # a rerun on what is left of the cluster
    assert code == 0, output[-3000:]
    assert_same_tables(phase2_tables(store), want)
    assert store.read_manifest()["phases"]["patterns"]["status"] == "completed"
    tables = check_every_engine(store)  # local disk: capture and phase2_* tables with all five engines
    assert {"query_stats", "attention_topk", "phase2_head_features", "phase2_charts"} <= set(tables)


def test_readme_starts_workers_with_the_worker_environment():
    text = README.read_text()
    for name, value in WORKER_ENV.items():
        assert f"{name}={value}" in text, f"README's dask worker command lacks {name}={value}"
