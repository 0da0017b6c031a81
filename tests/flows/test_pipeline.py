"""The pipeline flow end to end on the tiny preset, inside one session-wide Prefect test harness."""

from sparselens.config import RunParams
from sparselens.flows.pipeline import pipeline
from sparselens.storage import RunStore


def test_pipeline_trains_and_evaluates_tiny(prefect_harness, tmp_path):
    run_id = pipeline(RunParams(preset="tiny", root=str(tmp_path), run_id="flow"))
    store = RunStore(str(tmp_path), run_id)
    phases = store.read_manifest()["phases"]
    assert phases["train"]["status"] == phases["evaluate"]["status"] == "completed"
    losses = store.read_table("eval_loss")
    assert set(losses.model) == {"dense", "dsa"}
    assert set(losses.seq_len) == {64, 128}  # T and 2T for tiny
    recall = store.read_table("indexer_recall")
    assert ((recall.recall >= 0) & (recall.recall <= recall.oracle_recall + 1e-9)).all()
