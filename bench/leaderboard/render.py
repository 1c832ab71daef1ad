"""The leaderboard's pages from its table model: Markdown and a self-contained HTML page, one table
per block (value [interval], the paired bold, `≈chance`), the suite's notes (baselines, detectable
differences, missing evidence) above its blocks, and on request a table of differences to dense."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.leaderboard.cells import COST
from bench.leaderboard.rows import Block, Row, Suite
from bench.leaderboard.text import LEGEND, NEAR_CHANCE, header_name, parts

DIFFERENCE_TITLE = "Difference to dense (pruned − dense, paired 95 % interval over the same items)"


@dataclass(frozen=True)
class Shown:
    """One table cell, before its markup: the value, what follows it, and its marks."""

    value: str
    rest: str = ""
    bold: bool = False
    near_chance: bool = False


def shown(block: Block, row: Row, column: str) -> Shown:
    value, rest = parts(column, row.estimates.get(column))
    return Shown(value, rest, row.label in block.best.get(column, ()), column in row.near_chance)


def tables(block: Block) -> list[tuple[str | None, list[str], list[tuple[Row, list[Shown]]]]]:
    """(caption, columns, rows) of the block's table and, where differences to dense were asked
    for, of the difference table (pruned rows only, no pruning time)."""
    found = [(None, block.columns, [(r, [shown(block, r, c) for c in block.columns]) for r in block.rows])]
    differing = [r for r in block.rows if r.vs_dense]
    if differing:
        columns = [c for c in block.columns if c != COST]
        found.append((DIFFERENCE_TITLE, columns,
                      [(r, [Shown(*parts(c, r.vs_dense.get(c), sign=True)) for c in columns])
                       for r in differing]))
    return found


def untested_note(block: Block) -> str | None:
    """Names the columns whose bold is the point-best alone (a row without per-item evidence)."""
    if not block.untested:
        return None
    if block.untested == set(block.best):
        return "Bold here is the point-best, without a paired test (no per-item evidence)."
    names = ", ".join(header_name(c) for c in block.columns if c in block.untested)
    return f"Bold without a paired test (a row has no per-item evidence): {names}."


def _md_cell(cell: Shown) -> str:
    text = (f"**{cell.value}**" if cell.bold else cell.value) + cell.rest
    return text + (f" {NEAR_CHANCE}" if cell.near_chance else "")


def _md_block(block: Block) -> list[str]:
    lines = [f"### {block.title}", ""]
    for caption, columns, rows in tables(block):
        if caption:
            lines += [f"{caption}:", ""]
        lines += ["| method | " + " | ".join(header_name(c) for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        lines += [f"| {row.label} | " + " | ".join(_md_cell(s) for s in cells) + " |" for row, cells in rows]
        lines.append("")
    note = untested_note(block)
    return lines + ([f"_{note}_", ""] if note else [])


def markdown(domain: str, suites: Sequence[Suite], header: str, images: Sequence[Path]) -> str:
    """The domain's page: one table per block, the images linked beside it (by file name)."""
    lines = [f"# Leaderboard: {domain}", "", header, "", LEGEND, ""]
    for suite in suites:
        lines += [f"## {suite.title}", ""]
        lines += [f"- {note}" for note in suite.notes] + ([""] if suite.notes else [])
        for block in suite.blocks:
            lines += _md_block(block)
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines).rstrip() + "\n"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px}
td{text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
tr.reference{color:#666;font-style:italic}strong{color:#0a5}img{max-width:100%;margin:1em 0}
.note{color:#555;font-size:0.9em}.ci{color:#777;font-size:0.85em}.chance{color:#b60;font-size:0.85em}"""


def _html_cell(cell: Shown) -> str:
    e = html.escape
    text = f"<strong>{e(cell.value)}</strong>" if cell.bold else e(cell.value)
    text += f"<span class='ci'>{e(cell.rest)}</span>" if cell.rest else ""
    text += f" <span class='chance'>{NEAR_CHANCE}</span>" if cell.near_chance else ""
    return f"<td>{text}</td>"


def _html_block(block: Block) -> list[str]:
    e = html.escape
    out = [f"<h3>{e(block.title)}</h3>"]
    for caption, columns, rows in tables(block):
        out.append((f"<p class='note'>{e(caption)}:</p>" if caption else "") + "<table><tr><th>method</th>"
                      + "".join(f"<th>{e(header_name(c))}</th>" for c in columns) + "</tr>")
        for row, cells in rows:
            css = " class='reference'" if row.reference else ""
            out.append(f"<tr{css}><td>{e(row.label)}</td>{''.join(_html_cell(s) for s in cells)}</tr>")
        out.append("</table>")
    note = untested_note(block)
    return out + ([f"<p class='note'>{e(note)}</p>"] if note else [])


def html_page(domain: str, suites: Sequence[Suite], header: str, images: Sequence[Path]) -> str:
    """A single file: styles inline, plots as data URIs."""
    e = html.escape
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>Leaderboard: {e(domain)}</title>",
            f"<style>{CSS}</style></head><body>", f"<h1>Leaderboard: {e(domain)}</h1>",
            f"<p class='note'>{e(header.replace('`', ''))}</p>",
            f"<p class='note'>{e(LEGEND.replace('`', ''))}</p>"]
    for suite in suites:
        page.append(f"<h2>{e(suite.title)}</h2>")
        page += [f"<p class='note'>{e(note.replace('`', ''))}</p>" for note in suite.notes]
        for block in suite.blocks:
            page += _html_block(block)
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        page.append(f"<img alt='{e(image.stem)}' src='data:image/png;base64,{data}'>")
    page.append("</body></html>")
    return "\n".join(page) + "\n"
