"""benchmarks/seeds.py end to end on the tiny preset: one run per seed, seeds that differ, mean ± sd that holds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sparselens.storage import RunStore

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seeds.py"


@pytest.mark.slow
def test_seeds_trains_each_seed_and_reports_the_spread(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("seeds_script", SCRIPT)
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    argv = ["--preset", "tiny", "--seeds", "0", "1", "--root", str(tmp_path)]
    assert seeds.main(argv) == 0
    out = capsys.readouterr().out
    runs = [RunStore(str(tmp_path), f"seeds-tiny-s{s}") for s in (0, 1)]
    assert [r.read_manifest()["config"]["train"]["seed"] for r in runs] == [0, 1]
    ratios = [
        r.read_table("eval_summary").set_index(["content_type", "seq_len"]).loc[("code", 64), "ratio"] for r in runs
    ]
    assert ratios[0] != ratios[1]  # the seed changes the trained models
    row = next(line for line in out.splitlines() if line.startswith("| code |") and "±" in line)
    mean, sd = (float(x) for x in row.split("|")[-2].split("±"))
    assert mean == pytest.approx(np.mean(ratios), abs=1e-4) and sd == pytest.approx(np.std(ratios, ddof=1), abs=1e-4)
    assert "Task answer accuracy" in out
    started = runs[0].read_manifest()["phases"]["train"]["started_at"]
    assert seeds.main(argv) == 0 and runs[0].read_manifest()["phases"]["train"]["started_at"] == started  # reused
    with pytest.raises(SystemExit):
        seeds.main(["--preset", "tiny", "--seeds", "3", "--root", str(tmp_path)])  # one seed has no spread
