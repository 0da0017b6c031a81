"""The monitor: its decision rule on made-up log ratios, and on a tiny run that every sample it measured stays in
`monitor_history` when it is killed, while only finished runs become history for later ones."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sparselens.benchmark import verdict as rule
from sparselens.benchmark.monitor import HISTORY, VERDICTS, log_ratios, run_monitor
from sparselens.config import MonitorConfig
from sparselens.runs import run_preset

CFG = MonitorConfig()


def spread(center: float, n: int, seed: int) -> np.ndarray:
    """n log ratios around log(center) with a 1% spread."""
    return np.log(center) + np.random.default_rng(seed).normal(0, 0.01, n)


@pytest.mark.parametrize(
    "now, history, verdict",
    [
        (spread(1.3, 10, 0), spread(1.3, 1, 1), "baseline"),  # fewer than 2 history samples
        (spread(1.3 * 1.2, 10, 0), spread(1.3, 20, 1), "regressed"),  # 20% slower, separated
        (spread(1.3 * 1.08, 10, 0), spread(1.3, 20, 1), "undecided"),  # clearly different, but under 10%
        (spread(1.3 * 1.02, 10, 0), spread(1.3, 20, 1), "same"),  # under 3%
        (spread(1.3, 10, 0), spread(1.3, 20, 1), "same"),
        (spread(1.3 / 1.2, 10, 0), spread(1.3, 20, 1), "improved"),
        (spread(1.3 * 1.2, 4, 0), spread(1.3, 4, 1), "undecided"),  # 4 against 4 can never reach p < 0.001
    ],
    ids=["baseline", "regressed", "undecided", "small_change", "same", "improved", "too_few"],
)
def test_timing_rule(now, history, verdict):
    got = rule.decide_timing(now, history, CFG)
    assert got["verdict"] == verdict, got
    assert got["n_current"] == len(now) and got["n_history"] == len(history)


def test_deterministic_numbers_and_overall():
    before = {"heldout_loss": 2.0, "cache_bytes_per_token": 576.0}
    assert rule.decide_deterministic(before, None, CFG)["verdict"] == "baseline"
    assert rule.decide_deterministic(dict(before), before, CFG)["verdict"] == "same"
    assert rule.decide_deterministic(before | {"heldout_loss": 2.0 * (1 + 1e-5)}, before, CFG)["verdict"] == "changed"
    assert rule.decide_deterministic(before | {"cache_bytes_per_token": 600.0}, before, CFG)["verdict"] == "changed"
    assert rule.overall(["same", "improved"]) == "improved"
    assert rule.overall(["same", "inconclusive", "improved"]) == "inconclusive"
    assert rule.overall(["same", "changed"]) == "regressed"
    assert rule.overall(["baseline", "baseline"]) == "baseline"


KILLABLE = """
import sys
from sparselens.benchmark.monitor import run_monitor
from sparselens.runs import run_preset
from sparselens.storage import RunStore
store = RunStore(sys.argv[1], sys.argv[2])
run_monitor(store, run_preset(store).with_section("monitor", samples=2000))
"""


def test_a_killed_monitor_keeps_its_samples_and_is_no_history(tiny_run, run_copy):
    store = run_copy(tiny_run)
    store.write_text("champion.json", json.dumps({"champion": "dsa"}))
    root = store.fs.unstrip_protocol(store.root)
    child = subprocess.Popen([sys.executable, "-c", KILLABLE, root, store.run_id], env=dict(os.environ))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and child.poll() is None:
            if store.table_exists(HISTORY) and len(store.read_table(HISTORY)) >= 1 + 4 * 3:
                break
            time.sleep(0.2)
        assert child.poll() is None, "the monitor child ended before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    killed = store.read_table(HISTORY)
    assert killed["monitor_run"].nunique() == 1 and len(killed) >= 13
    assert not store.table_exists(VERDICTS)  # it never finished
    assert len(log_ratios(killed, "prefill_ms")) >= 3  # complete sample pairs, readable

    result = run_monitor(store, run_preset(store))
    after = store.read_table(HISTORY)
    assert set(killed["measured_at"]) <= set(after["measured_at"])  # nothing measured before was lost
    assert result.verdict == "baseline"  # the killed run is not history: it has no verdict
    verdicts = store.read_table(VERDICTS)
    assert set(verdicts["monitor_run"]) == {result.monitor_run}
