"""The tiny pipeline end to end with `--root s3://bucket/prefix` on an S3-compatible server (moto, own process).

The first `sparselens run` is killed in the DSA warm-up; the rerun resumes from the checkpoints in the bucket
and finishes every phase. Every table then reads from the bucket with pandas, pyarrow.dataset, dask.dataframe,
DuckDB and polars.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
from engines import check_every_engine
from servers import stop_process_group, wait_until

from sparselens.config import PIPELINE_PHASES, get_preset
from sparselens.storage import RunStore

TINY = get_preset("tiny").train


@pytest.mark.slow
def test_tiny_pipeline_in_a_bucket_resumes_training_and_reads_with_every_engine(s3_server, s3_root, cli):
    args = ("run", "--preset", "tiny", "--root", s3_root, "--run-id", "s3run")
    store = RunStore(s3_root, "s3run")
    first = store._p("checkpoints", "dsa", "warmup", "step_000010.pt")
    proc, log = cli.start(*args, env=s3_server)
    try:
        wait_until(lambda: store.fs.exists(first) or proc.poll() is not None, "the first warm-up checkpoint", 300)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        stop_process_group(proc)
    assert not store.has_model("dsa")  # it really died in the warm-up
    kept = store.checkpoint_steps("dsa", "warmup")[-1]
    assert 10 <= kept < TINY.warmup_steps

    code, output = cli.run(*args, "-v", env=s3_server)  # -v: the stages' step lines are logged
    assert code == 0, output[-3000:]
    assert "pretrain step" not in output and "dense_continue step" not in output  # finished stages were kept
    warmup = [int(s) for s in re.findall(r"warmup step (\d+)", output)]
    assert warmup and min(warmup) >= TINY.dense_steps + kept  # the warm-up went on from the bucket's checkpoint
    log = store.read_table("train_log")
    logged = sorted(log[log["stage"] == "warmup"]["step"])
    assert logged == list(range(TINY.dense_steps + TINY.log_every - 1, TINY.dense_steps + TINY.warmup_steps, 10))
    phases = store.read_manifest()["phases"]
    assert {p: e["status"] for p, e in phases.items()} == dict.fromkeys(PIPELINE_PHASES, "completed")
    tables = check_every_engine(store)  # strict reads of the committed files: tests/unit/test_object_store.py
    assert {"train_log", "eval_loss", "query_stats", "selections", "phase2_sparsify"} <= set(tables)
    assert {"phase3_candidates", "phase4_benchmark"} <= set(tables)  # Phase 3 and 4 in the bucket too
