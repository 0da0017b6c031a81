"""Phase 1 (interpret): summaries, charts and the report section, read only from the capture tables.

The settings are the run's `interpret` config section (`sparselens.runs.phase_config(store, "interpret")`).
`interpret_run(store, cfg)` runs the three steps; flows call them one task each:
`write_phase1_tables`, `draw_phase1_charts`, `write_phase1_report` (then publish `phase1_summary`).
"""

from __future__ import annotations

from sparselens.config import InterpretConfig
from sparselens.interpret.figures import draw_phase1_charts
from sparselens.interpret.run import key_numbers, write_phase1_tables
from sparselens.interpret.section import phase1_summary, write_phase1_report


def interpret_run(store, cfg: InterpretConfig) -> str:
    """All of Phase 1 for one run; returns the path of the rebuilt report.html."""
    write_phase1_tables(store, cfg)
    draw_phase1_charts(store, cfg)
    return write_phase1_report(store)


__all__ = [
    "draw_phase1_charts",
    "interpret_run",
    "key_numbers",
    "phase1_summary",
    "write_phase1_report",
    "write_phase1_tables",
]
