"""A capture SIGKILLed mid-way and rerun ends with the same tables as one that was never interrupted."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd

from sparselens.capture import TABLES, capture_run
from sparselens.config import get_preset

RUNNER = textwrap.dedent("""
    import sys, time
    from sparselens.capture import capture_run, layout
    from sparselens.config import get_preset
    from sparselens.storage import RunStore
    write = layout.write_part
    def slow_write(store, path, table):  # stretch the capture so the parent can kill it half-way
        time.sleep(0.05)
        return write(store, path, table)
    layout.write_part = slow_write
    capture_run(RunStore(sys.argv[1], sys.argv[2]), get_preset("tiny").capture)
""")
KEYS = ["model", "seq_len", "layer", "sample_id", "head", "indexer_head", "query_pos"]


def _parquet_files(store) -> list[str]:
    root = f"{store.run_dir}/tables"
    return [p for p in store.fs.find(root) if p.endswith(".parquet")] if store.fs.exists(root) else []


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([k for k in KEYS if k in frame]).reset_index(drop=True)


def test_killed_capture_resumes_to_the_same_tables(tiny_run, tiny_captured, run_copy):
    store = run_copy(tiny_run)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, store.root, store.run_id], env=dict(os.environ))
    deadline = time.time() + 120
    while len(_parquet_files(store)) < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    written = len(_parquet_files(store))
    expected = len(_parquet_files(tiny_captured))
    assert 0 < written < expected, (written, expected)  # it really died half-way
    results = capture_run(store, get_preset("tiny").capture)
    assert sum(r.files_skipped for r in results) >= written - len(TABLES)  # finished work was not redone
    assert len(_parquet_files(store)) == expected
    leftovers = [p for p in store.fs.find(f"{store.run_dir}/tables") if "/." in p]
    assert not leftovers, leftovers
    for name in TABLES:
        a, b = _sorted(store.read_table(name)), _sorted(tiny_captured.read_table(name))
        lists = [c for c in a if a[c].dtype == object]
        pd.testing.assert_frame_equal(a.drop(columns=lists), b.drop(columns=lists), rtol=1e-5)
        for column in lists:
            assert all(_same(x, y) for x, y in zip(a[column], b[column], strict=True)), (name, column)


def _same(x, y) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return len(x) == len(y) and np.allclose(x, y, rtol=1e-5, atol=1e-7, equal_nan=True)
