"""Markdown tables and the `Summary` a phase step returns for its Prefect task to publish (no Prefect here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Summary:
    """What one phase step publishes: a markdown report, tables and links (artifact names under the run), and the
    small result its task returns to the flow. Library functions build it; tasks only publish it."""

    markdown: str
    description: str
    tables: dict[str, list[dict]] = field(default_factory=dict)  # artifact name -> JSON-safe records
    links: dict[str, tuple[str, str]] = field(default_factory=dict)  # artifact name -> (url, link text)
    result: Any = None


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


def records(df: pd.DataFrame, digits: int = 4) -> list[dict]:
    """Rows of `df` as JSON-safe dicts (floats rounded to `digits`, missing values None) for a table artifact."""
    rounded = df.round(digits)
    return rounded.astype(object).where(rounded.notna(), None).to_dict("records")
