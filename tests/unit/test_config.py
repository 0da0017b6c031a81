"""One resolved config: presets by name only, sections read from the manifest, overrides validated and recorded."""

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from sparselens.config import (
    PRESETS,
    CaptureParams,
    ConfigError,
    PatternsParams,
    RunParams,
    TrainParams,
    get_preset,
    preset_from_dict,
)
from sparselens.runs import check_run_config, open_run, phase, phase_config, phase_preset, recorded_overrides
from sparselens.storage import RunStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny(tmp_path) -> RunStore:
    store = RunStore(str(tmp_path), "cfg")
    open_run(store, "tiny")
    return store


def manifest_bytes(store: RunStore) -> bytes:
    return store.read_bytes("manifest.json")


@pytest.mark.parametrize("name", ["huge", "", None, "Quick"])
def test_unknown_preset_names_are_errors_listing_the_valid_ones(name):
    with pytest.raises(ConfigError, match="unknown preset") as err:
        get_preset(name)
    assert all(valid in str(err.value) for valid in PRESETS)


@pytest.mark.parametrize("params", [RunParams, TrainParams])
def test_flow_parameters_refuse_unknown_presets(params):
    with pytest.raises(ValidationError, match=r"unknown preset 'huge'.*quick"):
        params(preset="huge", run_id="x")


def test_a_manifest_without_a_section_falls_back_only_to_a_known_preset():
    data = get_preset("tiny").to_dict()
    del data["patterns"]
    assert preset_from_dict(data).patterns == get_preset("tiny").patterns  # an older run: its own preset's values
    with pytest.raises(ConfigError, match="unknown preset 'tinyy'"):
        preset_from_dict(data | {"name": "tinyy"})
    with pytest.raises(ConfigError, match="unknown sections"):
        preset_from_dict(get_preset("tiny").to_dict() | {"phase2": {}})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_the_manifest(tmp_path, name):
    store = RunStore(str(tmp_path), name)
    assert open_run(store, name) == PRESETS[name]
    assert preset_from_dict(json.loads(manifest_bytes(store))["config"]) == PRESETS[name]


def test_phases_read_their_section_from_the_manifest_not_the_preset_table(tiny):
    manifest = json.loads(manifest_bytes(tiny))
    manifest["config"]["capture"]["n_samples"] = 1
    manifest["config"]["capture"]["topk_samples"] = 0
    tiny.write_text("manifest.json", json.dumps(manifest))
    assert phase_config(tiny, "capture").n_samples == 1 != get_preset("tiny").capture.n_samples
    assert phase_config(tiny, "capture", {"seq_lens": [32]}).seq_lens == (32,)  # JSON lists become tuples
    assert phase_preset(tiny, "evaluate", {"n_samples": 1}).eval.n_samples == 1


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"budgett": 0.1}, r"patterns has no setting 'budgett'; valid settings: budget, max_queries"),
        ({"budget": 2.0}, r"budget=2.0 must be a fraction"),
        ({"max_k": "8"}, r"patterns.max_k='8' must be of type int"),
        ({"efficiency_seq_lens": 64}, r"efficiency_seq_lens=64 must be of type tuple"),
    ],
)
def test_bad_overrides_are_config_errors_and_write_nothing(tiny, overrides, match):
    before = manifest_bytes(tiny)
    with pytest.raises(ConfigError, match=match):
        with phase(tiny, "patterns", overrides):
            raise AssertionError("the phase must not start")
    assert manifest_bytes(tiny) == before


def test_phase_records_overrides_beside_its_status_and_uses_them(tiny):
    with phase(tiny, "patterns", {"budget": 0.25, "efficiency_seq_lens": [32, 64]}) as cfg:
        assert cfg.budget == 0.25 and cfg.efficiency_seq_lens == (32, 64)
        entry = tiny.read_manifest()["phases"]["patterns"]
        assert entry["status"] == "running" and entry["overrides"] == {"budget": 0.25, "efficiency_seq_lens": [32, 64]}
        assert phase_config(tiny, "patterns").budget == 0.25  # what the phase's tasks read
    entry = tiny.read_manifest()["phases"]["patterns"]
    assert entry["status"] == "completed" and entry["seconds"] >= 0
    with phase(tiny, "patterns"):  # a rerun without overrides records that too
        pass
    assert recorded_overrides(tiny, "patterns") == {} and phase_config(tiny, "patterns").budget == 0.125
    with pytest.raises(RuntimeError, match="boom"), phase(tiny, "capture", {"n_samples": 1}):
        raise RuntimeError("boom")
    entry = tiny.read_manifest()["phases"]["capture"]
    assert entry["status"] == "failed" and "boom" in entry["error"] and entry["overrides"] == {"n_samples": 1}


def test_phase_params_overrides_are_typed_fields_plus_settings():
    params = CaptureParams(run_id="r", n_samples=2, fresh=True, settings={"top_m": 8})
    assert params.overrides() == {"n_samples": 2, "top_m": 8}  # `fresh` is not a capture setting
    assert PatternsParams(run_id="r", dask_address="tcp://x:1", n_workers=1).overrides() == {"n_workers": 1}
    with pytest.raises(ConfigError, match="both as a parameter and in settings"):
        CaptureParams(run_id="r", n_samples=2, settings={"n_samples": 3}).overrides()


def test_an_existing_run_refuses_another_preset_k_or_setting_naming_both(tiny):
    assert check_run_config(tiny, "tiny", 8) == get_preset("tiny")
    assert check_run_config(tiny, None, None) == get_preset("tiny")  # nothing asked: the run's own config
    with pytest.raises(ConfigError, match=r"preset 'tiny'.*preset: run has 'tiny', asked for 'quick'"):
        open_run(tiny, "quick")
    with pytest.raises(ConfigError, match=r"model.topk \(k\): run has 8, asked for 4"):
        open_run(tiny, None, topk=4)
    with pytest.raises(ConfigError, match=r"capture.n_samples: run has 2, asked for 3"):
        open_run(tiny, "tiny", overrides={"capture": {"n_samples": 3}})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        open_run(tiny, "huge")


def test_a_new_run_records_what_its_config_came_from(tmp_path):
    store = RunStore(str(tmp_path), "new")
    preset = open_run(store, "tiny", topk=4, overrides={"capture": {"n_samples": 1, "topk_samples": 1}})
    manifest = store.read_manifest()
    assert preset.model.topk == 4 and preset_from_dict(manifest["config"]).capture.n_samples == 1
    assert manifest["created_with"] == {
        "preset": "tiny",
        "topk": 4,
        "overrides": {"capture": {"n_samples": 1, "topk_samples": 1}},
    }


def test_there_is_one_preset_table():
    """Named presets live in config/presets.py only: no other module keeps a table or falls back to one."""
    table = re.compile(r"^\s*[A-Z0-9_]*PRESETS\s*(:[^=]*)?=", re.MULTILINE)
    fallback = re.compile(r"\.get\(\s*[^)]*,\s*[A-Z0-9_]*PRESETS\[")
    found = [
        str(path.relative_to(REPO))
        for folder in ("sparselens", "benchmarks")
        for path in sorted((REPO / folder).rglob("*.py"))
        if table.search(path.read_text()) or fallback.search(path.read_text())
    ]
    assert found == ["sparselens/config/presets.py"]
