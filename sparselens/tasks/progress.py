"""Progress of the long steps for whoever is watching: a Prefect progress artifact per step (the UI shows it on the
run's page) and, when the CLI turned it on (`terminal_display`), a terminal progress bar per step with its count,
what it is doing (e.g. the loss), its rate and the time left.

Steps report through `StepProgress(run_id, key, label, total, unit)`: `update(done, info)` as work completes, then
`finish(info)`; `total=None` for a step that cannot count its work (it shows its elapsed time). Prefect tasks may
run in threads and update at the same time; every update is cheap (the artifact is written at most every
ARTIFACT_EVERY_S). Off a terminal (output piped to a file), the display prints one plain line per step at most every
LINE_EVERY_S, and one when it finishes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from sparselens.runs import artifact_key

ARTIFACT_EVERY_S = 2.0  # at most one progress-artifact update per this many seconds and step
LINE_EVERY_S = 30.0  # off a terminal: at most one line per this many seconds and step

_display: TerminalDisplay | None = None  # the process's terminal display, while the CLI runs a flow


def rate_text(done: float, start_done: float, elapsed: float, total: float | None, unit: str) -> tuple[str, str]:
    """('2.1 steps/s', '3 min 10 s left') from the work done since the step (re)started; ('', '') before any."""
    if elapsed <= 0 or done <= start_done:
        return "", ""
    rate = (done - start_done) / elapsed
    per = f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit.rstrip('s') or unit}"
    if total is None:
        return per, ""
    left = max(0.0, total - done) / rate
    return per, f"{_seconds(left)} left"


def _seconds(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s" if seconds < 10 else f"{s} s"


class TerminalDisplay:
    """Progress bars on a terminal (rich), or plain throttled lines when the stream is not a terminal."""

    def __init__(self, stream: TextIO | None = None, force_terminal: bool | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal)
        self._lock = threading.Lock()
        self._last_line: dict[int, float] = {}
        self.bars = None
        if self.console.is_terminal:
            self.bars = Progress(
                SpinnerColumn(finished_text="[green]✓"),
                TextColumn("{task.description:<36}"),
                BarColumn(bar_width=28),
                TextColumn("{task.fields[count]:>15}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )

    def __enter__(self) -> TerminalDisplay:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bars is not None:
            self.bars.stop()

    def add(self, label: str, total: float | None) -> int:
        if self.bars is None:
            with self._lock:
                bar = len(self._last_line)
                self._last_line[bar] = 0.0
            return bar
        return self.bars.add_task(label, total=total, count="", info="")

    def show(self, bar: int, label: str, done: float, total: float | None, count: str, info: str, final: bool) -> None:
        if self.bars is not None:
            if final:  # a finished step leaves the live area as one printed line, so only running bars stay
                self.bars.remove_task(bar)
                self.console.print(f"[green]✓[/] {label:<36} {count:>15}  {info}".rstrip(), highlight=False)
                return
            self.bars.update(bar, total=total, completed=done if total is not None else 0, count=count, info=info)
            return
        now = time.monotonic()
        with self._lock:
            if not final and now - self._last_line.get(bar, 0.0) < LINE_EVERY_S:
                return
            self._last_line[bar] = now
        line = f"{label}: {'done, ' if final else ''}{count}{'  ' if count else ''}{info}".rstrip(" :,")
        self.console.file.write(line + "\n")  # plain lines: a log file gets no wrapping or colour codes
        self.console.file.flush()


class StepProgress:
    """One long step's progress: a Prefect progress artifact and, under the CLI, a terminal bar (module docstring)."""

    def __init__(
        self, run_id: str, key: str, label: str, total: float | None, unit: str = "steps", artifact: bool = True
    ) -> None:
        """`artifact=False`: the terminal bar only (a flow that publishes one artifact for several steps)."""
        self.label, self.total, self.unit = label, total, unit
        self.created = self.t0 = time.monotonic()
        self.start_done, self._last, self.info = None, 0.0, ""
        key = artifact_key(run_id, f"{key}-progress")
        self.artifact = create_progress_artifact(0.0, key=key, description=label) if artifact else None
        self.display = _display
        self.bar = None if self.display is None else self.display.add(label, total)

    def _count(self, done: float) -> str:
        if self.total is None:
            return f"{done:g} {self.unit}" if done else ""
        return f"{done:g}/{self.total:g} {self.unit}"

    def update(self, done: float, info: str = "", final: bool = False, total: float | None = None) -> None:
        """`done` units of `total` so far (`total` given here once a step learns it); `info` is shown beside the bar
        (e.g. 'loss 2.314')."""
        self.total = self.total if total is None else total
        self.info = info or (self.info if final else "")
        info = self.info
        now = time.monotonic()
        if self.start_done is None:  # a resumed step starts part-way: its rate counts from its first report
            self.start_done = done
            self.t0 = now if done else self.t0
        rate, left = rate_text(done, self.start_done, now - self.t0, self.total, self.unit)
        took = f"in {_seconds(now - self.created)}" if final else ""
        text = "  ".join(x for x in (info, rate, took if final else left) if x)
        if self.display is not None:
            self.display.show(self.bar, self.label, done, self.total, self._count(done), text, final)
        if self.artifact is not None and (final or now - self._last >= ARTIFACT_EVERY_S):
            self._last = now
            share = 100.0 if final else (100.0 * done / self.total if self.total else 0.0)
            update_progress_artifact(self.artifact, min(100.0, share), description=f"{self.label}: {text}".rstrip(": "))

    def finish(self, info: str = "") -> None:
        """Mark the step done (`info`: default the last one reported); a step that never reported work (e.g.
        resumed after it had finished) shows no rate."""
        done = self.total if self.total is not None else 0
        if self.start_done is None:
            self.start_done = done
        self.update(done, info, final=True)


@contextlib.contextmanager
def step_progress(run_id: str, key: str, label: str, total: float | None = None, unit: str = "steps"):
    """`StepProgress` for the block, finished when the block ends without an error."""
    progress = StepProgress(run_id, key, label, total, unit)
    yield progress
    progress.finish()


@contextlib.contextmanager
def terminal_display(stream: TextIO | None = None, force_terminal: bool | None = None) -> Iterator[TerminalDisplay]:
    """Turn on terminal bars for every step run in this process while the block runs (the CLI wraps its flow)."""
    global _display
    display = TerminalDisplay(stream, force_terminal)
    _display = display
    try:
        with display:
            yield display
    finally:
        _display = None
