"""A real Prefect server on 127.0.0.1: deploy from prefect.yaml, run the train deployment through a process worker."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sparselens.storage import RunStore

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout} s")


def _prefect(env: dict, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


STATE_OF = """
import asyncio, sys
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        runs = await c.read_flow_runs()
        for r in runs:
            print(r.name, r.state_type.value, r.parameters)
asyncio.run(main())
"""


@pytest.fixture()
def prefect_server(tmp_path):
    port = _free_port()
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        OMP_WAIT_POLICY="PASSIVE",
    )
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_healthy(env["PREFECT_API_URL"], server)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_train_deployment_runs_through_a_process_worker(prefect_server, tmp_path):
    env = prefect_server
    root = str(tmp_path / "store")
    _prefect(env, "work-pool", "create", "sparselens-process", "--type", "process")
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert "train" in deployed
    params = {"params": {"run_id": "deployed", "root": root, "preset": "tiny"}}
    _prefect(env, "deployment", "run", "train/train", "--params", json.dumps(params))
    _prefect(env, "worker", "start", "--pool", "sparselens-process", "--run-once", timeout=600)
    states = subprocess.run([sys.executable, "-c", STATE_OF], env=env, capture_output=True, text=True, timeout=60)
    train_runs = [line for line in states.stdout.splitlines() if line.startswith("train-deployed ")]
    assert train_runs and all(" COMPLETED " in line for line in train_runs), states.stdout + states.stderr
    store = RunStore(root, "deployed")
    assert store.has_model("dense") and store.has_model("dsa")
    assert len(store.read_table("train_log")) > 0
    assert store.read_manifest()["phases"]["train"]["status"] == "completed"
