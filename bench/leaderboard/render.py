"""The leaderboard's files from its table model: Markdown and a self-contained HTML page (one
table per block, the best pruned value per column in bold) and a CSV with one row per cell."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.leaderboard.table import COST, Block, Row, Suite, direction, method_rank, setting_rank


def header_name(metric: str) -> str:
    """A column header: the metric without its scope, with the arrow of the better direction."""
    if metric == COST:
        return "prune s"
    arrow = {-1: " ↓", 1: " ↑"}.get(direction(metric), "")
    return " ".join(metric.split("/")[1:]) + arrow


def fmt(column: str, value: Any) -> str:
    """A value as the tables show it: perplexities to 2 places, scores to 3, seconds to 1, a
    missing value as an empty cell (never a zero)."""
    if value is None:
        return ""
    if not isinstance(value, int | float):
        return str(value)
    if column == COST:
        return f"{value:.1f}"
    return f"{value:.2f}" if column.endswith("/ppl") else f"{value:.3f}"


LEGEND = ("↓ lower is better, ↑ higher is better. Bold: the best pruned method in the column (ties all "
          "bold); dense is the unpruned reference. An empty cell was not run or not measured. "
          "`prune s`: pruning wall time in seconds.")


def row_cells(block: Block, row: Row) -> list[tuple[str, bool]]:
    """Each column's text for one row, and whether it is the block's best."""
    return [(fmt(column, row.values.get(column)), row.label in block.best.get(column, ()))
            for column in block.columns]


def markdown(domain: str, suites: Sequence[Suite], header: str, images: Sequence[Path]) -> str:
    """The domain's page: one table per block, the images linked beside it (by file name)."""
    lines = [f"# Leaderboard: {domain}", "", header, "", LEGEND, ""]
    for suite in suites:
        lines += [f"## {suite.title}", ""]
        for block in suite.blocks:
            lines += [f"### {block.title}", "",
                      "| method | " + " | ".join(header_name(c) for c in block.columns) + " |",
                      "|---|" + "---:|" * len(block.columns)]
            for row in block.rows:
                cells = [f"**{text}**" if best else text for text, best in row_cells(block, row)]
                lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(suites: Sequence[Suite]) -> str:
    """One row per cell (dense once), every metric of the domain; empty where not measured."""
    columns = list(dict.fromkeys(c for s in suites for b in s.blocks for c in b.columns))
    if not columns:
        columns = [COST]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "eval", "method", "label", "sparsity", "pattern", "calib", "key", *columns])
    for suite in suites:
        order = sorted(suite.cells, key=lambda c: (not c.reference, setting_rank(c.setting or (0.0, "", "")),
                                                   method_rank(c.method), c.label))
        for c in order:
            values = c.values()
            writer.writerow([c.model, c.eval, c.method, c.label, c.sparsity, c.pattern,
                             c.record["cell"].get("calib") or "", c.record["key"],
                             *("" if values.get(col) is None else values[col] for col in columns)])
    return buffer.getvalue()


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
tr.reference{color:#666;font-style:italic}strong{color:#0a5}img{max-width:100%;margin:1em 0}
.note{color:#555;font-size:0.9em}"""


def html_page(domain: str, suites: Sequence[Suite], header: str, images: Sequence[Path]) -> str:
    """A single file: styles inline, plots as data URIs."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Leaderboard: {e(domain)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>Leaderboard: {e(domain)}</h1>",
             f"<p class='note'>{e(header.replace('`', ''))}</p>",
             f"<p class='note'>{e(LEGEND.replace('`', ''))}</p>"]
    for suite in suites:
        parts.append(f"<h2>{e(suite.title)}</h2>")
        for block in suite.blocks:
            parts.append(f"<h3>{e(block.title)}</h3><table><tr><th>method</th>"
                         + "".join(f"<th>{e(header_name(c))}</th>" for c in block.columns) + "</tr>")
            for row in block.rows:
                cells = [f"<td><strong>{e(text)}</strong></td>" if best else f"<td>{e(text)}</td>"
                         for text, best in row_cells(block, row)]
                css = " class='reference'" if row.reference else ""
                parts.append(f"<tr{css}><td>{e(row.label)}</td>{''.join(cells)}</tr>")
            parts.append("</table>")
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        parts.append(f"<img alt='{e(image.stem)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
