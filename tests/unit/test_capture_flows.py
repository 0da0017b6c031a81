"""The capture and interpret flows on the tiny run, inside the session-wide Prefect test harness."""

import asyncio

import pytest

from sparselens.config import CaptureParams, InterpretParams
from sparselens.flows.capture import capture
from sparselens.flows.interpret import interpret


async def _artifact_keys(run_id: str) -> set[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.key for a in await client.read_artifacts() if a.key and run_id in a.key}


@pytest.mark.slow
def test_capture_then_interpret_flows_publish_tables_report_and_artifacts(prefect_harness, tiny_run, run_copy):
    store = run_copy(tiny_run)
    params = dict(run_id=store.run_id, root=store.fs.unstrip_protocol(store.root))
    summary = capture(CaptureParams(**params, seq_lens=[32, 64], n_samples=1))
    assert summary["rows_written"] > 0 and {t["table"] for t in summary["tables"]} >= {"query_stats", "selections"}
    again = capture(CaptureParams(**params, seq_lens=[32, 64], n_samples=1))
    assert again["rows_written"] == 0  # everything was skipped
    report = interpret(InterpretParams(**params, view_content_types=["induction"]))
    assert report.endswith("report.html") and "Phase 1" in store.read_text("report.html")
    phases = store.read_manifest()["phases"]
    assert phases["capture"]["status"] == phases["interpret"]["status"] == "completed"
    keys = asyncio.run(_artifact_keys(store.run_id))
    for what in ("capture-progress", "capture", "capture-tables", "phase1", "phase1-key-numbers", "report"):
        assert f"sparselens-{store.run_id}-{what}" in keys, (what, keys)
