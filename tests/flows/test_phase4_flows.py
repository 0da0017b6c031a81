"""Phase 4 through the CLI on a tiny run: the benchmark flow writes its table, champion, charts, report section and
artifacts; two clean monitor runs flag nothing, a run on the reference kernels exits 3; every monitor run emits
`checked`, the regressed one also `regressed`. The models are untrained (timings and wiring are under test)."""

import asyncio
import json

import pytest
import torch

from sparselens.cli import EXIT_REGRESSED, main
from sparselens.config import get_preset
from sparselens.models import build_model
from sparselens.storage import RunStore
from sparselens.tasks import monitor as monitor_tasks


def cli(*argv) -> int:
    return main(list(argv))


@pytest.fixture
def untrained(tmp_path) -> RunStore:
    preset = get_preset("tiny")
    store = RunStore(str(tmp_path), "p4flow")
    store.create(preset.to_dict())
    for seed, name in enumerate(("dense", "dsa")):
        torch.manual_seed(seed)
        store.save_model(name, build_model(preset.model.replace(attention=name)))
    return store


async def _artifact_keys(run_id: str) -> set[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.key for a in await client.read_artifacts() if a.key and run_id in a.key}


@pytest.fixture
def events(monkeypatch):
    seen = []
    monkeypatch.setattr(monitor_tasks, "emit_event", lambda event, **kw: seen.append((event, kw["payload"])))
    return seen


def test_benchmark_then_monitor_through_the_cli(prefect_harness, untrained, events, capsys):
    store = untrained
    root = store.fs.unstrip_protocol(store.root)
    assert cli("phase", "benchmark", "--run-id", store.run_id, "--root", root) == 0
    champion = json.loads(store.read_text("champion.json"))
    assert champion["champion"] in ("dsa", "dense") and champion["version"].startswith("champion-rule/")
    assert store.read_manifest()["phases"]["benchmark"]["status"] == "completed"
    assert "Phase 4" in store.read_text("report.html") and store.read_bytes("charts/phase4/decode.png")
    assert set(store.read_table("phase4_benchmark")["model"]) == {"dense", "dsa"}
    keys = asyncio.run(_artifact_keys(store.run_id))
    assert {"sparselens-p4flow-phase4", "sparselens-p4flow-phase4-summary"} <= keys

    codes = [cli("phase", "monitor", "--run-id", store.run_id, "--root", root) for _ in range(2)]
    assert codes == [0, 0]
    slow = cli("phase", "monitor", "--run-id", store.run_id, "--root", root, "--kernel-backend", "reference")
    assert slow == EXIT_REGRESSED, capsys.readouterr().out
    verdicts = store.read_table("monitor_verdicts")
    overall = verdicts[verdicts.metric == "overall"].sort_values("finished_at")
    assert list(overall.verdict)[0] == "baseline" and list(overall.verdict)[1] != "regressed"
    assert list(overall.verdict)[2] == "regressed" and list(overall.kernel_backend) == ["default"] * 2 + ["reference"]
    assert [e for e, _ in events] == ["sparselens.champion.checked"] * 3 + ["sparselens.champion.regressed"]
    assert events[-1][1]["verdict"] == "regressed" and events[-1][1]["run_id"] == store.run_id
    assert "sparselens-p4flow-monitor" in asyncio.run(_artifact_keys(store.run_id))


def test_kernel_backend_is_refused_for_other_phases(untrained, capsys):
    store = untrained
    code = cli("phase", "evaluate", "--run-id", store.run_id, "--root", store.fs.unstrip_protocol(store.root),
               "--kernel-backend", "reference")  # fmt: skip
    assert code == 2 and "--kernel-backend applies to benchmark and monitor" in capsys.readouterr().err
