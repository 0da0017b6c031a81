"""CLI of Phase 4 without Prefect: `generate` streams the same bytes as the library, bad requests exit 2 with one
error line and nothing on stdout; `phase monitor|benchmark` refuse a missing run, a missing champion and kernels
that cannot run here before any flow starts."""

import os

import pytest

from sparselens.benchmark.generate import generate
from sparselens.cli import main


def test_generate_streams_the_greedy_continuation(tiny_run, capsysbinary):
    root = tiny_run.fs.unstrip_protocol(tiny_run.root)
    args = ["generate", "--run-id", "tiny", "--root", root, "--model", "dsa", "--prompt", "def f(x):"]
    assert main([*args, "--max-new-tokens", "30", "--temperature", "0"]) == 0
    out = capsysbinary.readouterr().out
    assert out == bytes(generate(tiny_run.load_model("dsa"), b"def f(x):", 30, temperature=0)) + b"\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "nope", "--max-new-tokens", "5"], "no saved model 'nope'"),
        (["--model", "dsa", "--max-new-tokens", "500"], "max_seq_len=256"),
        (["--model", "dsa", "--max-new-tokens", "5", "--top-p", "2"], "top_p=2.0"),
        (["--model", "champion", "--max-new-tokens", "5"], "no champion yet"),
    ],
    ids=["unknown_model", "too_long", "top_p", "no_champion"],
)
def test_generate_errors(tiny_run, capsys, extra, message):
    root = tiny_run.fs.unstrip_protocol(tiny_run.root)
    code = main(["generate", "--run-id", "tiny", "--root", root, "--prompt", "x", *extra])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and captured.err.count("error") == 1 and captured.out == ""


@pytest.mark.parametrize("phase", ["benchmark", "monitor"])
def test_phase4_on_a_missing_run(tmp_path, capsys, phase):
    code = main(["phase", phase, "--run-id", "nope", "--root", str(tmp_path / "store")])
    assert code == 2 and "'nope'" in capsys.readouterr().err and not (tmp_path / "store").exists()


def test_monitor_needs_a_champion_and_runnable_kernels(tiny_run, capsys, monkeypatch):
    root = tiny_run.fs.unstrip_protocol(tiny_run.root)
    assert main(["phase", "monitor", "--run-id", "tiny", "--root", root]) == 2
    assert "sparselens phase benchmark --run-id tiny" in capsys.readouterr().err
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert os.environ.get("TRITON_INTERPRET") is None
    assert main(["phase", "benchmark", "--run-id", "tiny", "--root", root, "--kernel-backend", "triton"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err
    assert "benchmark" not in tiny_run.read_manifest()["phases"]  # refused before the flow started
