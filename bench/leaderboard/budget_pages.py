"""The budget views' files (`python -m bench.leaderboard --budget`): per domain `<domain>-budget.md`
(the equal-budget tables and retention, the figures linked) and `<domain>-budget.csv` (one row per
method and budget), only for panels that span more than one domain-token level."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.leaderboard import budget_plots
from bench.leaderboard.budget import (
    Panel,
    Point,
    best_point,
    level_block,
    panels,
    pareto,
    retention,
    spans_budgets,
    to_best,
)
from bench.leaderboard.cells import RecordCell
from bench.leaderboard.compare import Comparisons
from bench.leaderboard.render import _md_cell, shown, untested_note
from bench.leaderboard.seeds import Estimate
from bench.leaderboard.text import header_name, parts
from core.files import write_atomic

LEGEND = ("Budgets: `domain tokens` counts the distinct domain calibration tokens a method drew times "
          "its passes over them (D-Pruner's epochs); `general` likewise for open-domain text. "
          "Equal-budget tables hold the domain tokens fixed; bold: the best, alone only where its paired "
          "difference to the runner-up (same items) excludes zero; `Δ best`: the paired difference to "
          "the point-best with its 95 % interval. `derived`: the budget was computed from an older "
          "record's config. Retention: domain gain = 1 − perplexity / dense, general loss = "
          "perplexity / dense − 1; `Pareto` marks the rows no other row beats on both. Equal-windows "
          "tables (only where the equal-budget tables split them) hold the window count fixed: a method "
          "that reads two sets of that many windows (D-Pruner with an update) beside one that reads "
          "one; `Δ best` there compares methods that read different domain tokens.")
PLACE = ["model", "eval", "domain", "sparsity", "pattern", "series", "label", "n_seeds", "general_tokens",
         "domain_tokens", "general_passes", "domain_passes", "domain_tokens_seen", "windows", "window_tokens",
         "optimizer_steps", "prune_seconds", "peak_memory_mb", "derived"]


def _scores(panel: Panel) -> dict[str, tuple[float, float]]:
    found = {p.label: retention(panel, p) for p in panel.points}
    return {label: score for label, score in found.items() if score is not None}


def _number(value: float | None, digits: str = ".1f") -> str:
    return "" if value is None else format(value, digits)


def _budget_cells(p: Point) -> list[str]:
    b = p.budgets[0]
    return [f"{p.seen('general'):,}", f"{p.domain_tokens:,}", str(b.get("optimizer_steps") or ""),
            _number(p.seconds), _number(p.memory_mb, ".0f"), "yes" if p.derived else ""]


def level_table(panel: Panel, title: str, at: Sequence[Point], compare: Comparisons) -> list[str]:
    """One equal-budget table in Markdown: each row's budget, then per metric its value and its
    paired difference to the point-best."""
    block = level_block(panel, title, at, compare)
    points = {p.label: p for p in at}
    best = {c: best_point(list(points.values()), c) for c in block.columns}
    head = ["method", "general tokens", "domain tokens", "steps", "prune s", "peak MB", "derived"]
    for column in block.columns:
        head += [header_name(column), "Δ best"]
    lines = [f"### {block.title}", "", "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 1)]
    for row in block.rows:
        cells = [row.label, *_budget_cells(points[row.label])]
        for column in block.columns:
            difference = to_best(points[row.label], best[column], column, compare)
            cells += [_md_cell(shown(block, row, column)), "".join(parts(column, difference, sign=True))]
        lines.append("| " + " | ".join(cells) + " |")
    note = untested_note(block)
    return lines + [""] + ([f"_{note}_", ""] if note else [])


def retention_table(panel: Panel) -> list[str]:
    scores = _scores(panel)
    if not scores:
        return ["_Retention: no dense row, or no domain and general perplexity, in this panel._", ""]
    front = pareto(scores)
    metrics = f"{panel.metrics(panel.domain)[0]}, {panel.metrics('general')[0]}"
    lines = [f"### Retention relative to dense ({metrics})", "",
             "| method | domain tokens | domain gain | general loss | Pareto |", "|---|---:|---:|---:|:---:|"]
    for p in panel.points:
        if p.label in scores:
            gain, loss = scores[p.label]
            lines.append(f"| {p.label} | {p.domain_tokens:,} | {100 * gain:+.1f} % | {100 * loss:+.1f} % | "
                         f"{'★' if p.label in front else ''} |")
    return lines + [""]


def figures(panel: Panel, out: Path) -> list[Path]:
    scores = _scores(panel)
    made = [budget_plots.budget_curves(panel, out / f"{panel.slug}-budget_curves.png"),
            budget_plots.cost_fronts(panel, out / f"{panel.slug}-cost_fronts.png"),
            budget_plots.retention_plot(panel, scores, pareto(scores), out / f"{panel.slug}-retention.png")]
    return [p for p in made if p is not None]


def _estimate_fields(estimate: Estimate | None) -> list[object]:
    if estimate is None:
        return ["", "", ""]
    low, high = estimate.interval or ("", "")
    return [estimate.value, low, high]


def csv_rows(panels_: Sequence[Panel], compare: Comparisons) -> str:
    """One row per method and budget: where it sits on the budget axes, each metric with its
    interval and its paired difference to the best at its level, and its retention."""
    metrics = sorted({m for panel in panels_ for m in panel.metrics(panel.domain) + panel.metrics("general")})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = [*PLACE]
    for m in metrics:
        head += [m, f"{m}_low", f"{m}_high", f"{m}_vs_best", f"{m}_vs_best_low", f"{m}_vs_best_high"]
    writer.writerow([*head, "domain_gain", "general_loss", "pareto"])
    for panel in panels_:
        scores = _scores(panel)
        front = pareto(scores)
        for p in panel.points:
            b = p.budgets[0]
            row = [panel.model, panel.eval, panel.domain, panel.sparsity, panel.pattern, p.series, p.label,
                   len(p.group.cells), b["tokens"]["general"], b["tokens"]["domain"], b["passes"]["general"],
                   b["passes"]["domain"], p.domain_tokens, *(p.windows or ("", "")), b.get("optimizer_steps"),
                   p.seconds, p.memory_mb,
                   p.derived]
            for m in metrics:
                best = best_point(panel.at(p.domain_tokens), m)
                row += _estimate_fields(p.estimate(m)) + _estimate_fields(to_best(p, best, m, compare))
            gain, loss = scores.get(p.label, ("", ""))
            writer.writerow([*row, gain, loss, p.label in front if p.label in scores else ""])
    return buffer.getvalue()


def write_budget(cells: Sequence[RecordCell], out: Path, header: str, compare: Comparisons) -> list[Path]:
    """Every budget file; returns the paths written (none where no panel spans two levels)."""
    found, missing = panels(cells)
    by_domain: dict[str, list[Panel]] = defaultdict(list)
    for panel in found:
        if spans_budgets(panel):
            by_domain[panel.domain].append(panel)
    written = []
    for domain, domain_panels in sorted(by_domain.items()):
        lines = [f"# Budgets: {domain}", "", header, "", LEGEND, ""]
        if missing:
            lines += [f"_{missing} row(s) left out: a record without a budget and a config it cannot be "
                      "derived from._", ""]
        for panel in domain_panels:
            images = figures(panel, out)
            written += images
            lines += [f"## {panel.title}", "", *(f"![{p.stem}]({p.name})" for p in images), ""]
            for level in panel.levels:
                title = f"Equal budget: {level:,} domain tokens"
                lines += level_table(panel, title, panel.at(level), compare)
            for windows, seqlen in panel.window_levels():
                lines += level_table(panel, f"Equal windows: {windows:,} windows of {seqlen:,} tokens",
                                     panel.at_windows((windows, seqlen)), compare)
            lines += retention_table(panel)
        for name, text in ((f"{domain}-budget.md", "\n".join(lines).rstrip() + "\n"),
                           (f"{domain}-budget.csv", csv_rows(domain_panels, compare))):
            write_atomic(out / name, text)
            written.append(out / name)
    return written
