"""Fixtures of the flow tests: small runs with untrained models and a tiny capture, and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from servers import stop_process_group

from sparselens.capture import capture_run
from sparselens.config import get_preset
from sparselens.models import build_model
from sparselens.storage import RunStore

REPO = Path(__file__).resolve().parents[2]


def make_untrained_run(root: str, run_id: str) -> RunStore:
    """A run of the tiny preset holding untrained dense and DSA models and their tiny capture (seconds): enough
    to test Phase 2's wiring, which does not care what the models learned."""
    preset = get_preset("tiny")
    torch.manual_seed(0)
    store = RunStore(root, run_id)
    store.create(preset.to_dict())
    for name, attention in (("dense", "dense"), ("dsa", "dsa")):
        store.save_model(name, build_model(preset.model.replace(attention=attention)))
    capture_run(store, preset.with_section("capture", seq_lens=(32, 64), n_samples=1).capture)
    return store


@pytest.fixture
def untrained_run():
    """`untrained_run(root, run_id)`: see make_untrained_run."""
    return make_untrained_run


@pytest.fixture(scope="module")
def captured_untrained(tmp_path_factory) -> RunStore:
    return make_untrained_run(str(tmp_path_factory.mktemp("patterns-flow")), "p2flow")


class Cli:
    """Runs `sparselens ...` in subprocesses that report to the session's Prefect test server (so no call starts
    an ephemeral server of its own); output goes to a log file whose text `run` returns."""

    def __init__(self, api_url: str, logs: Path) -> None:
        self.env = dict(os.environ, PREFECT_API_URL=api_url, OMP_WAIT_POLICY="PASSIVE")
        self.logs = logs
        self.calls = 0

    def start(self, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        self.calls += 1
        log = self.logs / f"sparselens-{self.calls}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sparselens.cli", *args],
                cwd=REPO,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return proc, log

    def run(self, *args: str, env: dict | None = None, timeout: float = 600) -> tuple[int, str]:
        proc, log = self.start(*args, env=env)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            stop_process_group(proc)
        return code, log.read_text()


@pytest.fixture
def cli(prefect_harness, tmp_path) -> Cli:
    from prefect.settings import PREFECT_API_URL

    return Cli(PREFECT_API_URL.value(), tmp_path)
