"""Thin Prefect tasks: each calls one library function and publishes the `Summary` it returns as artifacts."""

from __future__ import annotations

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from sparselens.runs import artifact_key
from sparselens.viz.markdown import Summary


def publish(run_id: str, name: str, summary: Summary) -> None:
    """Publish `summary` as the run's markdown artifact `name`, plus its table and link artifacts."""
    create_markdown_artifact(key=artifact_key(run_id, name), markdown=summary.markdown, description=summary.description)
    for what, rows in summary.tables.items():
        create_table_artifact(key=artifact_key(run_id, what), table=rows, description=f"{name}: {what}")
    for what, (url, text) in summary.links.items():
        create_link_artifact(url, link_text=text, key=artifact_key(run_id, what))
