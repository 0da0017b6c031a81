"""The pipeline flow end to end on the tiny preset, inside one session-wide Prefect test harness."""

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from sparselens.config import PIPELINE_PHASES, SECTIONS, RunParams, get_preset, preset_from_dict
from sparselens.flows.pipeline import pipeline
from sparselens.runs import artifact_key
from sparselens.storage import RunStore
from sparselens.viz.report import BUNDLE_URLS, NETWORK, bundle_urls, without_bundle


def test_pipeline_runs_every_phase_of_tiny(prefect_harness, tmp_path):
    run_id = pipeline(RunParams(preset="tiny", root=str(tmp_path), run_id="flow"))
    store = RunStore(str(tmp_path), run_id)
    manifest = store.read_manifest()
    phases = manifest["phases"]
    assert list(phases) == list(PIPELINE_PHASES), phases  # every phase but the scheduled monitor ran, in order
    for name, entry in phases.items():
        assert entry["status"] == "completed" and entry["seconds"] > 0 and entry["overrides"] == {}, (name, entry)
    assert set(SECTIONS) <= set(manifest["config"]) and preset_from_dict(manifest["config"]) == get_preset("tiny")
    assert manifest["created_with"] == {"preset": "tiny", "topk": None, "overrides": {}}
    losses = store.read_table("eval_loss")
    assert set(losses.model) == {"dense", "dsa"}
    assert set(losses.seq_len) == {64, 128}  # T and 2T for tiny
    recall = store.read_table("indexer_recall")
    assert ((recall.recall >= 0) & (recall.recall <= recall.oracle_recall + 1e-9)).all()
    tables = ("train_log", "query_stats", "selections", "phase1_scaling", "phase2_head_features")
    for table in tables + ("phase3_candidates", "phase4_benchmark"):
        assert store.table_exists(table), table
    assert store.champion_name() in set(store.read_table("phase3_candidates")["candidate"])
    report = store.read_text("report.html")
    titles = ("Training", "Evaluation", "Phase 1", "Phase 2", "Phase 3", "Phase 4")
    order = [report.index(f"<h2>{title}") for title in titles]
    assert order == sorted(order)  # training and evaluation first, then the phases
    assert len(report.encode()) < 5_000_000 and "<img" not in without_bundle(report)  # specs, not PNG images
    assert not NETWORK.search(without_bundle(report)) and set(bundle_urls(report)) <= set(BUNDLE_URLS)
    assert store.table_exists("eval_summary") and store.table_exists("eval_loss_samples")
    with get_client(sync_client=True) as client:  # every long step left a finished progress artifact
        keys = [artifact_key(run_id, f"{step}-progress") for step in ("train-sparse", "evaluate", "phase2-efficiency")]
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {a.key for a in found} == set(keys) and all(a.data == 100.0 for a in found), found
