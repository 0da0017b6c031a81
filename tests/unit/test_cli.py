"""CLI: bad inputs give one clear error, a non-zero exit, and no new files."""

import os
from pathlib import Path

import pytest

from sparselens.cli import main
from sparselens.config import get_preset
from sparselens.storage import RunStore
from sparselens.training import train_stage


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_unknown_preset(tmp_path, capsys):
    code, err = run_cli(capsys, "run", "--preset", "huge", "--root", str(tmp_path / "store"))
    assert code == 2 and "unknown preset 'huge'" in err and "quick" in err
    assert err.count("error") == 1
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("k", ["0", "-4"])
def test_nonpositive_k(tmp_path, capsys, k):
    code, err = run_cli(capsys, "run", "--preset", "tiny", "--topk", k, "--root", str(tmp_path / "store"))
    assert code == 2 and f"topk={k}" in err and "positive" in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("phase", ["train", "evaluate", "capture", "interpret", "patterns"])
def test_phase_on_missing_run(tmp_path, capsys, phase):
    code, err = run_cli(capsys, "phase", phase, "--run-id", "nope", "--root", str(tmp_path / "store"))
    assert code == 2 and "'nope'" in err and "not found" in err and "sparselens run" in err
    assert not (tmp_path / "store").exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    preset = get_preset("tiny")
    store = RunStore(str(tmp_path), "r")
    store.create(preset.to_dict())
    train_stage(store, preset, "pretrain")
    step = store.checkpoint_steps("dense", "pretrain")[-1]
    path = Path(store.checkpoint_dir("dense", "pretrain")) / f"step_{step:06d}.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    before = files_under(tmp_path)
    code, err = run_cli(capsys, "phase", "train", "--run-id", "r", "--root", str(tmp_path))
    assert code == 2 and "corrupt" in err.lower() and path.name in err
    assert files_under(tmp_path) == before
    assert os.path.getsize(path) > 0


@pytest.fixture
def no_pipeline(monkeypatch):
    """Fail the test if the CLI ever starts the pipeline (refusals must come before Prefect)."""
    import sparselens.flows.pipeline

    def started(*args, **kwargs):
        raise AssertionError("the pipeline was started")

    monkeypatch.setattr(sparselens.flows.pipeline, "pipeline", started)


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--preset", "quick"], ["preset 'tiny'", "run has 'tiny', asked for 'quick'"]),
        (["--topk", "4"], ["k=8", "run has 8, asked for 4"]),
        (["--preset", "tiny", "--topk", "16"], ["run has 8, asked for 16"]),
        (["--set", "capture.n_samples=3"], ["capture.n_samples: run has 2, asked for 3"]),
        (["--preset", "huge"], ["unknown preset 'huge'", "quick"]),
    ],
)
def test_an_existing_run_refuses_another_preset_or_k(tmp_path, capsys, no_pipeline, argv, names):
    RunStore(str(tmp_path), "r").create(get_preset("tiny").to_dict())
    before = {p: (tmp_path / p).read_bytes() for p in files_under(tmp_path) if (tmp_path / p).is_file()}
    code, err = run_cli(capsys, "run", "--run-id", "r", "--root", str(tmp_path), *argv)
    assert code == 2 and all(n in err for n in names), err
    after = {p: (tmp_path / p).read_bytes() for p in files_under(tmp_path) if (tmp_path / p).is_file()}
    assert after == before


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("nope=1", "capture has no setting 'nope'; valid settings: seq_lens, n_samples"),
        ("n_samples=abc", "capture.n_samples='abc' must be of type int"),
        ("seq_lens=[32, -1]", "seq_lens=(32, -1) must be a non-empty tuple of positive lengths"),
        ("patterns.budget=0.1", "phase 'capture' changes only its 'capture' section"),
        ("n_samples", "must look like KEY=VALUE"),
    ],
)
def test_a_bad_phase_setting_is_exit_2_and_writes_nothing(tmp_path, capsys, setting, message):
    RunStore(str(tmp_path), "r").create(get_preset("tiny").to_dict())
    before = files_under(tmp_path), (tmp_path / "runs" / "r" / "manifest.json").read_bytes()
    code, err = run_cli(capsys, "phase", "capture", "--run-id", "r", "--root", str(tmp_path), "--set", setting)
    assert code == 2 and message in err, err
    assert (files_under(tmp_path), (tmp_path / "runs" / "r" / "manifest.json").read_bytes()) == before


def test_a_phase_rerun_with_an_override_records_and_uses_it(prefect_harness, tiny_run, run_copy, capsys):
    store = run_copy(tiny_run)
    root = store.fs.unstrip_protocol(store.root)
    argv = ("phase", "evaluate", "--run-id", store.run_id, "--root", root)
    code, err = run_cli(capsys, *argv, "--set", "n_samples=1", "--set", "eval.recall_samples=1")
    assert code == 0, err
    entry = store.read_manifest()["phases"]["evaluate"]
    assert entry["status"] == "completed" and entry["overrides"] == {"n_samples": 1, "recall_samples": 1}
    assert (store.read_table("eval_loss")["n_samples"] == 1).all()  # used, not only recorded
    assert run_cli(capsys, *argv)[0] == 0  # a rerun without overrides records that it had none
    assert store.read_manifest()["phases"]["evaluate"]["overrides"] == {}
    assert (store.read_table("eval_loss")["n_samples"] == get_preset("tiny").eval.n_samples).all()


def test_phase_options_reach_the_flow_parameters(tmp_path, capsys, monkeypatch):
    import sparselens.flows

    seen = []
    monkeypatch.setattr(sparselens.flows, "phase_flow", lambda name: (seen.append, None))
    RunStore(str(tmp_path), "r").create(get_preset("tiny").to_dict())
    argv = ("--run-id", "r", "--root", str(tmp_path))
    assert run_cli(capsys, "phase", "capture", *argv, "--fresh", "--set", "capture.top_m=8")[0] == 0
    assert run_cli(capsys, "phase", "patterns", *argv, "--dask-address", "tcp://h:1", "--set", "n_workers=1")[0] == 0
    capture, patterns = seen
    assert capture.fresh and capture.overrides() == {"top_m": 8}
    assert patterns.dask_address == "tcp://h:1" and patterns.overrides() == {"n_workers": 1}
