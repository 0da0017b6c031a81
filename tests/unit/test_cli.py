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
