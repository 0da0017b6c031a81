"""prefect.yaml's Phase 4 block on a real server: the monitor deployment is scheduled with a concurrency limit of 1
that cancels new runs, and a `sparselens.champion.regressed` event starts a benchmark run of the named run."""

import json
import subprocess
import sys
import time

from tests.flows.test_deploy import _prefect, prefect_server  # noqa: F401  (the server fixture)

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


def test_monitor_schedule_concurrency_and_regressed_trigger(prefect_server):  # noqa: F811
    env = prefect_server
    _prefect(env, "work-pool", "create", "sparselens-process", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--name", "benchmark", "--name", "monitor")
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
