"""The run's `report.html`: one self-contained page assembled from sections that each phase writes.

A phase calls `write_section(store, key, title, body, order)` (stored as `report/sections/<key>.json`) and then
`build_report(store)`, which joins every stored section by `order` into `report.html`. Figures are embedded as
PNG data URLs and link to their interactive HTML by relative path, so the page references nothing on a network.
"""

from __future__ import annotations

import base64
import html
import json
import posixpath
import time

import pandas as pd

from sparselens.storage import RunStore

SECTIONS_DIR = "report/sections"
REPORT_FILE = "report.html"
STYLE = """
body { font-family: 'DejaVu Sans', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; } th { background: #f0f0f0; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; } nav li { margin: 2px 0; } .note { color: #555; font-size: 0.9em; }
"""


def table_html(df: pd.DataFrame, digits: int = 3) -> str:
    """An HTML table of `df` (index dropped), floats rounded to `digits`."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_cell(v, digits))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def figure_html(png: bytes, caption: str, href: str | None = None) -> str:
    """A figure with the PNG embedded as a data URL; `href` (a relative path) links the interactive chart."""
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    img = f'<img alt="{html.escape(caption)}" src="{src}">'
    if href is not None:
        img = f'<a href="{html.escape(href)}">{img}</a>'
        caption += " (click for the interactive chart)"
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def write_section(store: RunStore, key: str, title: str, body: str, order: int) -> str:
    """Store one report section (HTML body, no <h2>); replaces an earlier section with the same key."""
    record = {"key": key, "title": title, "order": order, "body": body, "written_at": time.time()}
    return store.write_text(posixpath.join(SECTIONS_DIR, f"{key}.json"), json.dumps(record))


def read_sections(store: RunStore) -> list[dict]:
    """The stored sections, in report order."""
    directory = posixpath.join(store.run_dir, SECTIONS_DIR)
    if not store.fs.isdir(directory):
        return []
    names = sorted(
        p
        for p in store.fs.ls(directory, detail=False)
        if p.endswith(".json") and not posixpath.basename(p).startswith(".")
    )
    sections = [json.loads(store.read_text(posixpath.relpath(p, store.run_dir))) for p in names]
    return sorted(sections, key=lambda s: (s["order"], s["key"]))


def build_report(store: RunStore) -> str:
    """Assemble `report.html` from every stored section; return its path."""
    sections = read_sections(store)
    nav = "".join(f'<li><a href="#{html.escape(s["key"])}">{html.escape(s["title"])}</a></li>' for s in sections)
    parts = [
        f'<section id="{html.escape(s["key"])}"><h2>{html.escape(s["title"])}</h2>{s["body"]}</section>'
        for s in sections
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>sparselens run {html.escape(store.run_id)}</title><style>{STYLE}</style></head><body>"
        f"<h1>sparselens run <code>{html.escape(store.run_id)}</code></h1>"
        f"<nav><ul>{nav}</ul></nav>{''.join(parts)}</body></html>\n"
    )
    return store.write_text(REPORT_FILE, page)
