"""A real Prefect server on 127.0.0.1: every deployment of prefect.yaml deploys (its work pools created as the
file's comments say), and the train deployment runs through a process worker."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from servers import free_port, stop_process_group, wait_until

from sparselens.flows import PHASES
from sparselens.storage import RunStore

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
PREFECT_YAML = (REPO / "prefect.yaml").read_text()
# work pool name -> `prefect work-pool create` arguments, exactly as prefect.yaml's header comment documents them
POOLS = {m[0]: m[1].split() for m in re.findall(r"^#\s+prefect work-pool create (\S+) ([^#\n]+)", PREFECT_YAML, re.M)}
DEPLOYMENTS = yaml.safe_load(PREFECT_YAML)["deployments"]


def _prefect(env: dict, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


QUERY = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        deployments = [
            {"name": d.name, "flow": (await c.read_flow(d.flow_id)).name, "entrypoint": d.entrypoint,
             "pool": d.work_pool_name, "schema": d.parameter_openapi_schema, "parameters": d.parameters,
             "job_variables": d.job_variables, "schedules": len(d.schedules),
             "limit": d.global_concurrency_limit.limit if d.global_concurrency_limit else None,
             "collision": d.concurrency_options.collision_strategy.value if d.concurrency_options else None}
            for d in await c.read_deployments()
        ]
        runs = [{"name": r.name, "state": r.state_type.value} for r in await c.read_flow_runs()]
    print(json.dumps({"deployments": deployments, "runs": runs}))
asyncio.run(main())
"""


def _query(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", QUERY], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A Prefect server with every work pool of prefect.yaml and every deployment of `prefect deploy --all`."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = dict(
        os.environ,
        PREFECT_HOME=str(home / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        OMP_WAIT_POLICY="PASSIVE",
    )
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: _healthy(env["PREFECT_API_URL"]), "prefect server", 180, server)
        pools = {d["work_pool"]["name"] for d in DEPLOYMENTS}
        unknown = pools - set(POOLS)
        assert not unknown, f"prefect.yaml uses work pools {unknown}: document `prefect work-pool create` in its header"
        for pool in sorted(pools):
            _prefect(env, "work-pool", "create", pool, *POOLS[pool])
        output = _prefect(env, "--no-prompt", "deploy", "--all")
        yield env, output
    finally:
        stop_process_group(server)


def test_every_deployment_of_prefect_yaml_is_on_the_server(deployed):
    env, output = deployed
    assert "does not exist" not in output, output
    got = {d["name"]: d for d in _query(env)["deployments"]}
    assert sorted(got) == sorted(d["name"] for d in DEPLOYMENTS), output
    for spec in DEPLOYMENTS:
        d = got[spec["name"]]
        assert d["entrypoint"] == spec["entrypoint"] and d["pool"] == spec["work_pool"]["name"], d
        assert "params" in d["schema"]["properties"], d["schema"]  # a pydantic form in the UI
        assert d["parameters"] == spec.get("parameters", {}), d
        assert d["schedules"] == len(spec.get("schedules", [])), d
        limit = spec.get("concurrency_limit")
        assert d["limit"] == (limit["limit"] if limit else None), d
        assert d["collision"] == (limit["collision_strategy"] if limit else None), d
        for key, value in spec["work_pool"].get("job_variables", {}).items():
            assert d["job_variables"][key] == value, (spec["name"], key)
    flows = {d["flow"] for d in got.values()}
    assert {*PHASES, "pipeline"} <= flows, f"phases without a deployment: { ({*PHASES, 'pipeline'} - flows) }"


def test_phases_that_write_one_run_are_limited_to_one_run_at_a_time():
    for spec in DEPLOYMENTS:
        if spec["entrypoint"].split(":")[1] in PHASES:
            assert spec.get("concurrency_limit", {}).get("limit") == 1, spec["name"]


def test_full_preset_deployments_go_to_the_gpu_pool():
    gpu = [d for d in DEPLOYMENTS if d.get("parameters", {}).get("params", {}).get("preset") == "full"]
    assert gpu and all(d["work_pool"]["name"] == "sparselens-gpu" for d in gpu)
    assert all(d["parameters"]["params"]["root"].startswith("s3://") for d in gpu)


def test_train_deployment_runs_through_a_process_worker(deployed, tmp_path):
    env, _ = deployed
    root = str(tmp_path / "store")
    params = {"params": {"run_id": "deployed", "root": root, "preset": "tiny"}}
    _prefect(env, "deployment", "run", "train/train", "--params", json.dumps(params))
    _prefect(env, "worker", "start", "--pool", "sparselens-process", "--run-once", timeout=600)
    runs = [r for r in _query(env)["runs"] if r["name"] == "train-deployed"]
    assert runs and all(r["state"] == "COMPLETED" for r in runs), runs
    store = RunStore(root, "deployed")
    assert store.has_model("dense") and store.has_model("dsa")
    assert len(store.read_table("train_log")) > 0
    assert store.read_manifest()["phases"]["train"]["status"] == "completed"


READ = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        out = {"deployments": {}, "automations": [], "runs": []}
        for d in await c.read_deployments():
            if d.name in ("benchmark", "monitor"):
                out["deployments"][d.name] = {
                    "limit": d.global_concurrency_limit.limit if d.global_concurrency_limit else None,
                    "strategy": str(d.concurrency_options.collision_strategy) if d.concurrency_options else None,
                    "schedules": [str(s.schedule) for s in d.schedules],
                    "id": str(d.id),
                }
        out["automations"] = [a.model_dump(mode="json") for a in await c.read_automations()]
        runs = await c.read_flow_runs()
        out["runs"] = [{"deployment_id": str(r.deployment_id), "parameters": r.parameters} for r in runs]
        print(json.dumps(out))
asyncio.run(main())
"""

EMIT = """
from prefect.events import emit_event
emit_event(event="sparselens.champion.regressed",
           resource={"prefect.resource.id": "sparselens.run.r1", "prefect.resource.name": "r1"},
           payload={"run_id": "r1", "root": "/data/store", "verdict": "regressed"})
"""


def _read(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", READ], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_monitor_schedule_concurrency_and_regressed_trigger(deployed):
    """Last in this module: the benchmark run the event starts must not meet the train test's worker."""
    env, _ = deployed
    state = _read(env)
    monitor = state["deployments"]["monitor"]
    assert monitor["limit"] == 1 and "CANCEL_NEW" in monitor["strategy"] and "17 */6 * * *" in monitor["schedules"][0]
    triggers = [a["trigger"] for a in state["automations"]]
    assert any("sparselens.champion.regressed" in t.get("expect", []) for t in triggers), triggers
    done = subprocess.run([sys.executable, "-c", EMIT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bench_id, deadline, runs = state["deployments"]["benchmark"]["id"], time.time() + 90, []
    while time.time() < deadline:
        runs = [r for r in _read(env)["runs"] if r["deployment_id"] == bench_id]
        if runs:
            break
        time.sleep(3)
    assert runs and runs[0]["parameters"] == {"params": {"run_id": "r1", "root": "/data/store"}}
