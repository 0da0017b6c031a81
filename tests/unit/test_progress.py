"""Progress reporting of long steps, and the CLI's quiet logging and end-of-run summary."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest

from sparselens.cli import QUIET_ENV, main, quiet_logging
from sparselens.tasks import progress as prog


def test_rate_and_time_left():
    assert prog.rate_text(30, 10, 10.0, 60, "steps") == ("2.0 steps/s", "15 s left")
    assert prog.rate_text(3, 1, 10.0, 100, "units") == ("5.0 s/unit", "8 min 05 s left")  # 97 left x 5 s
    assert prog.rate_text(10, 10, 5.0, 60, "steps") == ("", "")  # nothing done since the (re)start
    assert prog.rate_text(5, 0, 2.0, None, "units") == ("2.5 units/s", "")


def test_off_a_terminal_steps_print_throttled_plain_lines(monkeypatch):
    stream = io.StringIO()
    with prog.terminal_display(stream) as display:
        assert display.bars is None and prog._display is display  # a StringIO is not a terminal
        bar = prog.StepProgress("r", "train-pretrain", "train dense pretrain", 60, artifact=False)
        bar.update(10, "lm loss 3.1000")
        bar.update(20, "lm loss 3.0000")  # within LINE_EVERY_S of the last line: not printed
        monkeypatch.setattr(prog, "LINE_EVERY_S", 0.0)
        bar.update(30, "lm loss 2.9000")
        bar.finish("lm loss 2.5000")
        quiet = prog.StepProgress("r", "charts", "phase 1 charts", None, artifact=False)
        quiet.finish()
    assert prog._display is None
    lines = stream.getvalue().splitlines()
    assert lines[0] == "train dense pretrain: 10/60 steps  lm loss 3.1000"
    assert lines[1].startswith("train dense pretrain: 30/60 steps  lm loss 2.9000  ") and "left" in lines[1]
    assert "3.0000" not in stream.getvalue()
    assert lines[2].startswith("train dense pretrain: done, 60/60 steps  lm loss 2.5000") and " in " in lines[2]
    assert lines[3].startswith("phase 1 charts: done, in ") and "/s" not in lines[3]  # no work counted, no rate


def test_quiet_logging_keeps_prefect_and_dask_at_warning_unless_verbose(monkeypatch):
    for key in QUIET_ENV:
        monkeypatch.setenv(key, "")  # recorded, so the test's changes are undone after it
        monkeypatch.delenv(key)
    quiet_logging(False)
    assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "WARNING"
    assert os.environ["DASK_LOGGING__DISTRIBUTED"] == "warning"
    assert logging.getLogger("distributed").level == logging.WARNING
    quiet_logging(True)
    assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "INFO"
    assert logging.getLogger("distributed").level == logging.INFO
    for key in QUIET_ENV:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "error")  # a user's own choice is kept
    quiet_logging(False)
    assert os.environ["DASK_LOGGING__DISTRIBUTED"] == "error"
    assert logging.getLogger("distributed").level == logging.WARNING


def test_a_phase_ends_with_what_it_found(prefect_harness, tiny_run, run_copy, capsys):
    store = run_copy(tiny_run)
    root = store.fs.unstrip_protocol(store.root)
    assert main(["phase", "evaluate", "--run-id", store.run_id, "--root", root]) == 0
    out, err = capsys.readouterr()
    assert "DSA / dense loss at T = 64 (95% paired bootstrap, n samples):" in out
    assert out.count(" n=2 ") == 5 and "vs oracle" in out and f"Report: {store.path('report.html')}" in out
    assert "evaluate dense + dsa: done, 30/30 units" in err  # the step's progress line
    assert "INFO" not in err  # Prefect's and Dask's own chatter stays off the terminal


@pytest.mark.parametrize("argv", [["-v", "runs"], ["runs", "--root", "/nonexistent"]])
def test_verbose_flag_is_accepted(argv, capsys):
    assert main(argv) == 0


def test_on_a_terminal_running_steps_are_bars_and_finished_ones_print_a_line():
    stream = io.StringIO()
    with prog.terminal_display(stream, force_terminal=True) as display:
        bar = prog.StepProgress("r", "train-sparse", "train dsa sparse", 250, artifact=False)
        bar.update(50, "lm loss 2.0000")
        task = display.bars.tasks[0]
        assert (task.completed, task.total, task.fields["count"]) == (50, 250, "50/250 steps")
        assert task.fields["info"] == "lm loss 2.0000"
        bar.finish("lm loss 1.9000")
        assert display.bars.tasks == []  # a finished step leaves the live area
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())  # without colour and cursor codes
    assert "✓ train dsa sparse" in text and "250/250 steps  lm loss 1.9000" in text
