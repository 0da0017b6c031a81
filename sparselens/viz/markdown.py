"""Markdown tables for Prefect artifacts and reports (no extra dependency)."""

from __future__ import annotations

import pandas as pd


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table of `df` (index dropped), floats rounded to `digits`."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines)
