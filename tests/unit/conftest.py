"""Shared fixtures of the unit tests: one tiny trained run per session, and one capture of it."""

import shutil

import pytest

from sparselens.capture import capture_run
from sparselens.config import get_preset
from sparselens.storage import RunStore
from sparselens.training import train_all

TINY_RUN_ID = "tiny"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> RunStore:
    """A trained tiny run (dense + DSA models, ~10 s); treat as read-only, copy it with `copy_run` to modify."""
    root = tmp_path_factory.mktemp("tiny-run")
    store = RunStore(str(root), TINY_RUN_ID)
    store.create(get_preset("tiny").to_dict())
    train_all(store, get_preset("tiny"))
    return store


def copy_run(store: RunStore, dest) -> RunStore:
    """A private copy of a local run (everything under its run directory) at `dest/runs/<run_id>`."""
    shutil.copytree(store.run_dir, dest / "runs" / store.run_id)
    return RunStore(str(dest), store.run_id)


@pytest.fixture(scope="session")
def tiny_captured(tiny_run, tmp_path_factory) -> RunStore:
    """A copy of the tiny run with the tiny preset's capture tables written; read-only."""
    store = copy_run(tiny_run, tmp_path_factory.mktemp("tiny-captured"))
    capture_run(store, get_preset("tiny").capture)
    return store


@pytest.fixture
def run_copy(tmp_path):
    """`run_copy(store)`: a private, writable copy of a session run for one test."""
    made = []

    def make(store: RunStore) -> RunStore:
        made.append(copy_run(store, tmp_path / f"copy-{len(made)}"))
        return made[-1]

    return make
