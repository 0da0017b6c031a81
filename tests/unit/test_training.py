"""Training: the warm-up trains the indexer, a SIGKILLed run resumes to identical results, bad inputs fail cleanly."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sparselens.config import get_preset
from sparselens.data.corpora import corpus_stream
from sparselens.data.dataset import validation_samples
from sparselens.evaluation import indexer_kl, loss_table
from sparselens.metrics import recall_per_query
from sparselens.models import build_model
from sparselens.storage import RunStore
from sparselens.training import train_all, train_log, train_stage
from sparselens.training.loop import TrainingDivergedError
from sparselens.training.recipe import model_for_stage

TINY = get_preset("tiny")


def new_store(root, run_id="r", preset=TINY) -> RunStore:
    store = RunStore(str(root), run_id)
    store.create(preset.to_dict())
    return store


def test_warmup_halves_validation_indexer_kl(tmp_path):
    store = new_store(tmp_path)
    train_stage(store, TINY, "pretrain")
    before = indexer_kl(model_for_stage(store, TINY, "warmup").eval(), TINY, n_samples=4)
    train_stage(store, TINY, "warmup")
    after = indexer_kl(model_for_stage(store, TINY, "sparse").eval(), TINY, n_samples=4)
    assert before > 0
    assert after <= 0.5 * before, (before, after)


def test_recall_per_query_counts_selected_mass_and_oracle():
    pattern = torch.tensor([[[[1.0, 0, 0], [0.25, 0.75, 0], [0.5, 0.2, 0.3]]]])  # [1, 1, 3, 3]
    idx = torch.tensor([[[0, -1], [0, -1], [1, 2]]])  # [1, 3, 2]
    recall, oracle = recall_per_query(pattern, idx)
    torch.testing.assert_close(recall, torch.tensor([[1.0, 0.25, 0.5]]))
    torch.testing.assert_close(oracle, torch.tensor([[1.0, 1.0, 0.8]]))


RUNNER = textwrap.dedent("""
    import sys
    from sparselens.config import get_preset
    from sparselens.storage import RunStore
    from sparselens.training import train_all
    store = RunStore(sys.argv[1], "r")
    if not store.exists():
        store.create(get_preset("tiny").to_dict())
    train_all(store, get_preset("tiny"))
""")


def _train_in_subprocess(root: Path, kill_when: Path | None = None) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(root)], env=env)
    if kill_when is None:
        return proc.wait(timeout=300)
    deadline = time.time() + 300
    while not kill_when.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def test_sigkilled_training_resumes_to_the_same_result(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert _train_in_subprocess(clean) == 0
    marker = killed / "runs/r/checkpoints/dsa/warmup/step_000010.pt"
    assert _train_in_subprocess(killed, kill_when=marker) == -signal.SIGKILL
    assert not (killed / "runs/r/models/dsa.pt").exists()  # it really died mid-way
    assert _train_in_subprocess(killed) == 0
    a, b = RunStore(str(clean), "r"), RunStore(str(killed), "r")
    cols = ["model", "stage", "step", "loss", "lm_loss", "kl_loss", "lr", "tokens_seen"]
    assert train_log(a, TINY)[cols].equals(train_log(b, TINY)[cols])
    for name in ("dense", "dsa"):
        sa, sb = a.load_model(name).state_dict(), b.load_model(name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_nan_guard_names_step_and_stage(tmp_path):
    preset = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, lr=1e6, grad_clip=1e9))
    store = new_store(tmp_path, preset=preset)
    with pytest.raises(TrainingDivergedError, match=r"step \d+ of stage 'pretrain'"):
        train_all(store, preset)


def test_evaluation_uses_at_most_the_disjoint_windows_and_records_how_many():
    t = 4096
    stream = corpus_stream("prose", "validation").tobytes()
    available = len(stream) // (t + 1)
    assert 1 <= available < 12  # prose validation is short: the test can fail
    samples = validation_samples("prose", t, 12)
    assert len(samples) == available
    offsets = sorted(stream.find(s.tokens.astype("uint8").tobytes()) for s in samples)
    assert min(offsets) >= 0 and (torch.tensor(offsets).diff() >= t + 1).all()  # disjoint windows
    preset = dataclasses.replace(
        TINY,
        model=dataclasses.replace(TINY.model, max_seq_len=t),
        train=dataclasses.replace(TINY.train, seq_len=t),
        eval=dataclasses.replace(TINY.eval, length_multipliers=(1,), n_samples=12, batch_size=4),
    )
    torch.manual_seed(0)
    table = loss_table(build_model(preset.model).eval(), "dense", preset, "r")
    n = dict(zip(table.content_type, table.n_samples, strict=True))
    assert n.pop("prose") == available
    assert set(n.values()) == {12}  # code holds enough windows; synthetic tasks are generated
