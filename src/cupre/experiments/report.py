"""The experiment's one-page report, ``OUT/report.html``: Table II, the figures, the time.

The page holds everything in one file (figures embedded as PNG data), so it can be
mailed or opened from any folder. Its sections: the machine and settings the figures
came from, a summary in words where the caller gives one (the demo's, with the overlays
of held-out images right after it), the table as ``table2.md`` has it, the overlays per
method at full size (and the other figures that have something to show), and where the
time went: each pre-training run and each fine-tuning cell (training, validation, test),
then the run's wall time. Times come from ``OUT/timing.json`` (pre-training, written by
the runner) and each cell's ``val_metrics.json``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from cupre.devices import cpu_name
from cupre.fileio import read_json, write_json_atomic, write_text_atomic

TIMING_FILE = "timing.json"
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}"
         ".note{color:#555}.wide{overflow-x:auto}.wide img{max-width:none}code{background:#f3f3f3;padding:0 3px}")


def add_time(out: Path, key: str, seconds: float) -> None:
    """Add ``seconds`` to ``key`` in ``OUT/timing.json`` (a resumed stage adds its part)."""
    path = Path(out) / TIMING_FILE
    times = read_json(path) if path.is_file() else {}
    times[key] = float(times.get(key, 0.0)) + float(seconds)
    write_json_atomic(path, times, indent=2)


def inline(text: str) -> str:
    """``text`` escaped for HTML, with markdown's ``code`` and **bold** spans rendered."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


def markdown_to_html(text: str) -> str:
    """The small markdown subset ``table2.md`` and the demo's summary use: ``#`` headings,
    pipe tables, ``-`` lists, paragraphs (consecutive lines joined), ``code`` and **bold**."""
    parts: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):
                    rows.append(cells)
                i += 1
            head, *body = rows
            parts.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                         + "</table>")
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            parts.append("<ul>" + "".join(items) + "</ul>")
            continue
        if line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")) + 1)
            parts.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line:
            paragraph = [line]
            while i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith(("|", "- ", "#")):
                i += 1
                paragraph.append(lines[i].strip())
            parts.append(f"<p>{inline(' '.join(paragraph))}</p>")
        i += 1
    return "\n".join(parts)


def cell_seconds(folder: Path) -> dict[str, float]:
    """A finished cell's seconds from its ``val_metrics.json``: ``total``, ``training``,
    ``val``, ``test`` (empty without the file)."""
    metrics = Path(folder) / "val_metrics.json"
    return json.loads(metrics.read_text()).get("seconds", {}) if metrics.is_file() else {}


def time_rows(out: Path, cells: list[tuple[str, Path]]) -> list[tuple[str, float]]:
    """``(what, seconds)``: each pre-training run, then each finished cell's parts."""
    path = Path(out) / TIMING_FILE
    rows = [(f"pre-training ({key})", float(v)) for key, v in (read_json(path) if path.is_file() else {}).items()]
    for label, folder in cells:
        rows += [(f"{label}: {part}", float(v)) for part, v in cell_seconds(folder).items() if part != "total"]
    return rows


def _image(path: Path, caption: str, *, full_size: bool = False) -> str:
    """A figure embedded as PNG data; ``full_size``: shown pixel for pixel (scrolling sideways
    where the page is narrower), not shrunk to the page."""
    data = base64.b64encode(path.read_bytes()).decode()
    wide = " class='wide'" if full_size else ""
    return (f"<figure{wide}><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption class='note'>{html.escape(caption)}</figcaption></figure>")


CAPTIONS = {
    "fig8_overlays": "Held-out images: the hand-drawn ground truth (green) and each model's masks (magenta), "
                     "the number of objects in brackets; shown at full size (scroll sideways on a narrow screen), "
                     "also in figures/fig8_overlays.png.",
    "fig3_ap_vs_iterations": "Validation AP during fine-tuning.",
    "fig4_ap_vs_fraction": "AP against the fraction of labeled images.",
    "fig6_ablations": "The ablations next to coco.",
}


def timing_table(rows: list[tuple[str, float]], wall_seconds: float | None) -> str:
    """The time table: each step's seconds, then the wall time from start to end (cells
    that ran side by side overlap, so their seconds add up to more than it)."""
    wall = ("" if wall_seconds is None else
            f"<tr><th>wall time of this run, start to end</th><th>{wall_seconds:.0f}</th></tr>")
    return ("<table><tr><th>step</th><th>seconds</th></tr>"
            + "".join(f"<tr><td>{html.escape(k)}</td><td>{s:.0f}</td></tr>" for k, s in rows)
            + wall + "</table><p class='note'>Cells run side by side overlap: their seconds add up to more than "
            "the wall time.</p>")


def write_report(out: Path, *, title: str, table: str, settings: str, cells: list[tuple[str, Path]],
                 summary: str | None = None, wall_seconds: float | None = None) -> Path:
    """Write ``OUT/report.html``; returns its path.

    Args:
        out: the experiment folder (its ``figures/`` are embedded).
        title: the page's heading.
        table: Table II as markdown (``table2.md``).
        settings: one line on what ran (device, precision, threads).
        cells: ``(label, folder)`` of each fine-tuning cell, for the time table.
        summary: markdown shown first (the demo's words for the person who ran it); the
            tables then follow under "The full tables".
        wall_seconds: the run's wall time, start to end.
    """
    out = Path(out)
    figures = [p for name in CAPTIONS for p in sorted((out / "figures").glob(f"{name}*.png"))]
    overlays = [p for p in figures if p.stem.startswith("fig8_overlays")]
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='note'>{html.escape(settings)}; CPU: {html.escape(cpu_name())}</p>"]
    if summary is not None:  # the words first, then the masks to judge them by, then the tables
        body += [markdown_to_html(summary), *[_image(p, CAPTIONS["fig8_overlays"], full_size=True) for p in overlays],
                 "<h2>The full tables</h2>"]
        figures = [p for p in figures if p not in overlays]
    body += [markdown_to_html(table),
             *[_image(p, CAPTIONS[next(n for n in CAPTIONS if p.stem.startswith(n))], full_size=p in overlays)
               for p in figures],
             "<h3>Where the time went</h3>", timing_table(time_rows(out, cells), wall_seconds)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")
    path = out / "report.html"
    write_text_atomic(path, page)
    return path
