"""The Phase 2 `patterns` flow on a one-worker LocalCluster, inside the session-wide Prefect test harness.

The run holds untrained tiny models (the flow's wiring is under test, not what the models learned), captured
with the tiny capture preset, so the fixture takes seconds instead of a training run.
"""

from __future__ import annotations

import asyncio

import pytest

from sparselens.config import PatternsParams
from sparselens.flows.patterns import patterns


async def _artifact_keys(run_id: str) -> set[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.key for a in await client.read_artifacts() if a.key and run_id in a.key}


@pytest.mark.slow
def test_patterns_flow_writes_every_table_on_a_local_cluster(prefect_harness, captured_untrained):
    store = captured_untrained
    params = PatternsParams(
        run_id=store.run_id, root=store.fs.unstrip_protocol(store.root), n_workers=1, sparsify_samples=1
    )
    counts = patterns(params)
    for table in (
        "phase2_head_features",
        "phase2_clusters",
        "phase2_relevance",
        "phase2_curves",
        "phase2_efficiency",
        "phase2_sparsify",
        "phase2_kind_stability",
        "phase2_ground_truth",
    ):
        assert counts[table] > 0 and store.table_exists(table), table
    assert counts["phase2_charts"] >= 9
    assert store.read_manifest()["phases"]["patterns"]["status"] == "completed"
    assert "Phase 2" in store.read_text("report.html")
    keys = asyncio.run(_artifact_keys(store.run_id))
    assert {f"sparselens-{store.run_id}-phase2", f"sparselens-{store.run_id}-phase2-sparsify"} <= keys


def test_patterns_flow_refuses_a_missing_run(prefect_harness, tmp_path):
    with pytest.raises(Exception, match="not found"):
        patterns(PatternsParams(run_id="missing", root=str(tmp_path)))
