"""The run's `report.html`: one self-contained page assembled from sections that each phase writes.

A phase calls `write_section(store, key, title, body, order)` (stored as `report/sections/<key>.json`) and then
`build_report(store)`, which joins every stored section by `order` into `report.html`.

Charts are interactive and offline: a section embeds each chart's Vega-Lite spec with `figure_html(spec, caption,
href)` (or `chart_figure(store, html_rel, caption)` for a chart saved by `viz.save.save_chart`, read from its
`.vl.json` beside the HTML), and `build_report` inlines one Vega bundle (vl-convert's JavaScript: Vega, Vega-Lite,
vega-embed) that draws every figure when the page opens. No images are base64-encoded into the page, and nothing is
fetched from a network (the bundle's only URLs are XML namespaces and links it never loads, `BUNDLE_URLS`).
"""

from __future__ import annotations

import functools
import html
import json
import os
import posixpath
import re
import time
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from sparselens.storage import RunStore
from sparselens.viz.save import spec_path, vl_version

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparselens"
SECTIONS_DIR = "report/sections"
REPORT_FILE = "report.html"
BUNDLE_START, BUNDLE_END = "<!-- vega bundle -->", "<!-- /vega bundle -->"
BUNDLE_URLS = (  # URL strings inside vl-convert's bundle: namespaces, an error message, the schema id, the editor link
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/2000/xmlns/",
    "https://github.com/vega/vega-lite/issues/2415",
    "https://vega.github.io/schema/vega/v6.json",
    "https://vega.github.io/editor/",
)
NETWORK = re.compile(r"(https?:|ftp:)//|src=[\"']//|@import|url\(\s*[\"']?(https?:)?//", re.IGNORECASE)  # a fetch
STYLE = """
body { font-family: 'DejaVu Sans', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
  padding: 0 1em; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; display: block; overflow-x: auto;
  max-width: 100%; width: fit-content; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; } th { background: #f0f0f0; }
figure { margin: 1em 0 2em; overflow-x: auto; } figcaption { font-size: 0.9em; color: #555; }
.vega-view { min-height: 40px; } nav li { margin: 2px 0; } .note { color: #555; font-size: 0.9em; }
"""
REPORT_BUDGET = 4_500_000  # bytes of report.html; the largest linkable figures become links beyond it
FIGURE = re.compile(
    r'<figure class="vega">.*?<script type="application/json" class="vega-spec">(?P<spec>.*?)</script>'
    r'<figcaption>(?P<caption>.*?)(?: \(<a href="(?P<href>[^"]*)">open alone</a>\))?</figcaption></figure>',
    re.DOTALL,
)
EMBED = """
document.querySelectorAll("figure.vega").forEach(function (fig) {
  var view = fig.querySelector("div.vega-view");
  var spec = JSON.parse(fig.querySelector("script.vega-spec").textContent);
  var options = {mode: "vega-lite", renderer: "canvas",
                 actions: {export: true, source: false, compiled: false, editor: false}};
  vegaEmbed(view, spec, options).catch(function (err) { view.textContent = "chart failed to draw: " + err; });
});
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


def figure_html(spec: str | dict, caption: str, href: str | None = None) -> str:
    """A figure that draws the Vega-Lite `spec` (JSON text or dict, e.g. `SavedChart.spec_json`) interactively;
    `href` (a path relative to report.html) links the chart's standalone HTML page."""
    if isinstance(spec, bytes | bytearray):
        raise TypeError(
            "figure_html takes the chart's Vega-Lite spec (SavedChart.spec_json, or chart_figure(store, html_path, "
            "caption) for a saved chart), not PNG bytes: report.html embeds specs, not images"
        )
    data = json.loads(spec) if isinstance(spec, str) else dict(spec)
    data.pop("$schema", None)  # an identifier, not fetched; the embed names the mode instead
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # safe inside <script>
    caption_html = html.escape(caption)
    if href is not None:
        caption_html += f' (<a href="{html.escape(href)}">open alone</a>)'
    return (
        f'<figure class="vega"><div class="vega-view" role="img" aria-label="{html.escape(caption)}"></div>'
        f'<script type="application/json" class="vega-spec">{text}</script>'
        f"<figcaption>{caption_html}</figcaption></figure>"
    )


def chart_figure(store: RunStore, html_rel: str, caption: str) -> str:
    """`figure_html` of a chart saved by `save_chart` (its spec is read from beside `html_rel`); a chart saved
    before specs were kept becomes a link to its HTML page."""
    spec_rel = spec_path(html_rel)
    if not store.fs.exists(posixpath.join(store.run_dir, spec_rel)):
        return f'<p><a href="{html.escape(html_rel)}">{html.escape(caption)}</a> (interactive chart, own page)</p>'
    return figure_html(store.read_text(spec_rel), caption, html_rel)


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


@functools.cache
def vega_bundle() -> str:
    """vl-convert's offline JavaScript bundle of Vega, Vega-Lite and vega-embed (~0.9 MB). Building it takes ~5 s,
    so it is kept per process and in CACHE_DIR, keyed on the vl-convert and Vega-Lite versions."""
    import vl_convert as vlc

    path = CACHE_DIR / f"vega-bundle-{version('vl-convert-python')}-vl{vl_version()}.js"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    bundle = vlc.javascript_bundle(vl_version=vl_version())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(bundle, encoding="utf-8")
        os.replace(tmp, path)  # a whole file or none
    except OSError:
        pass  # a read-only home only costs the rebuild next time
    return bundle


def bundle_urls(page: str) -> list[str]:
    """Every http(s) URL string inside the page's Vega bundle (for checks: all must be in BUNDLE_URLS)."""
    start, end = page.find(BUNDLE_START), page.find(BUNDLE_END)
    return re.findall(r"https?://[^\"'\s)`]*", page[start:end]) if start >= 0 else []


def without_bundle(page: str) -> str:
    """The page with its Vega bundle cut out (what the report itself references)."""
    start, end = page.find(BUNDLE_START), page.find(BUNDLE_END)
    return page if start < 0 else page[:start] + page[end + len(BUNDLE_END) :]


def _within_budget(body: str, budget: int) -> str:
    """`body` with its largest linkable figures (those with an `href`) replaced by links until it fits `budget`
    bytes: the report stays small enough to open and send, every chart stays one click away."""
    figures = [m for m in FIGURE.finditer(body) if m.group("href")]
    excess = len(body.encode()) - budget
    drop = set()
    for m in sorted(figures, key=lambda m: len(m.group(0)), reverse=True):
        if excess <= 0:
            break
        drop.add(m.start())
        excess -= len(m.group(0)) - 300
    if not drop:
        return body

    def link(m: re.Match) -> str:
        if m.start() not in drop:
            return m.group(0)
        href, size = m.group("href"), len(m.group("spec")) / 1e6
        return (
            f'<figure class="linked"><p><a href="{href}">{m.group("caption")}</a>: interactive chart on its own page '
            f"({size:.1f} MB of chart data, left out to keep this page under {REPORT_BUDGET / 1e6:.1f} MB)</p></figure>"
        )

    return FIGURE.sub(link, body)


def build_report(store: RunStore) -> str:
    """Assemble `report.html` from every stored section; return its path."""
    sections = read_sections(store)
    nav = "".join(f'<li><a href="#{html.escape(s["key"])}">{html.escape(s["title"])}</a></li>' for s in sections)
    parts = [
        f'<section id="{html.escape(s["key"])}"><h2>{html.escape(s["title"])}</h2>{s["body"]}</section>'
        for s in sections
    ]
    body, scripts = "".join(parts), ""
    if 'class="vega-spec"' in body:
        bundle = vega_bundle().replace("</script", "<\\/script")
        body = _within_budget(body, REPORT_BUDGET - len(bundle) - 20_000)  # the bundle and the page around it
        scripts = f"{BUNDLE_START}<script>{bundle}</script>{BUNDLE_END}<script>{EMBED}</script>"
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="sparselens, vl-convert {version("vl-convert-python")}">'
        f"<title>sparselens run {html.escape(store.run_id)}</title><style>{STYLE}</style></head><body>"
        f"<h1>sparselens run <code>{html.escape(store.run_id)}</code></h1>"
        f"<nav><ul>{nav}</ul></nav>{body}{scripts}</body></html>\n"
    )
    return store.write_text(REPORT_FILE, page)
