"""The mask x update view's files (`python -m bench.leaderboard --mask-update`): per domain
`<domain>-mask-update.md` (per panel and metric a masks x updates table and the gap to dense) and
`<domain>-mask-update.csv` (one row per mask and update), for the panels where some mask has both
`none` and an update (mask_update.py)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.leaderboard.cells import RecordCell
from bench.leaderboard.compare import Comparisons
from bench.leaderboard.mask_update import NONE, Gap, MetricTable, Panel, gaps, metric_table, panels
from bench.leaderboard.render import Shown, _md_cell
from bench.leaderboard.seeds import Estimate
from bench.leaderboard.text import header_name, parts
from core.files import write_atomic

LEGEND = ("Rows: the mask (the method, `+ dsnot` where DSnoT refined it); columns: what followed it, "
          "`none` or SparseGPT's OBS update of the kept weights under the fixed mask on `<source>` "
          "windows, `obs(<source>)`. `sparsegpt (joint)` chooses its mask and update in one step on its "
          "calibration windows and sits in that source's column, so that within a column the rows differ "
          "by the mask alone. A value reads `value [low, high]`, its 95 % interval over the scored items. "
          "`<update> − none`: the update's effect on that mask; `Δ best`: the row minus the column's "
          "point-best; both paired over the same items with a 95 % interval. Bold: the column's best, "
          "alone only where its paired difference to the runner-up excludes zero, else shared by every "
          "row the test cannot tell from it. Gap to dense: the mask alone − dense (total) = mask alone − "
          "updated (what the update recovered) + updated − dense (what remains), each paired.")
PLACE = ["model", "eval", "domain", "sparsity", "pattern", "mask", "update", "method", "refine", "joint",
         "label", "n_seeds", "keys"]
FIELDS = ("", "_vs_none", "_vs_best", "_vs_dense")


def _text(metric: str, estimate: Estimate | None) -> str:
    return "".join(parts(metric, estimate, sign=True))


def _value(panel: Panel, table: MetricTable, mask: str, update: str) -> str:
    group = panel.at(mask, update)
    if group is None:
        return ""
    value, rest = parts(table.metric, group.estimates.get(table.metric))
    return _md_cell(Shown(value, rest, bold=mask in table.best.get(update, ())))


def _gap_line(metric: str, gap: Gap) -> str:
    where = f"{gap.mask}, {gap.update}"
    if gap.total is None or gap.recovered is None:
        why = "mask and update in one step" if gap.joint else "no cell of the mask alone"
        return f"- {where}: remains {_text(metric, gap.remains)} ({why})"
    share = f" ({100 * gap.share:.0f} % recovered)" if gap.share is not None else ""
    return (f"- {where}: total {_text(metric, gap.total)} = recovered {_text(metric, gap.recovered)}"
            f" + remains {_text(metric, gap.remains)}{share}")


def metric_lines(panel: Panel, table: MetricTable) -> list[str]:
    """One metric of a panel in Markdown: the dense reference, the table, its untested note and
    the gap to dense."""
    metric = table.metric
    lines = [f"### {metric.split('/')[0]}: {header_name(metric)}", ""]
    dense = panel.dense.estimates.get(metric) if panel.dense else None
    lines += [f"Dense (reference): {''.join(parts(metric, dense))}", ""] if dense else []
    head = ["mask"]
    for update in panel.updates:
        head += [update] + ([f"{update} − none"] if update != NONE else []) + ["Δ best"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for mask in panel.masks:
        cells = [mask]
        for update in panel.updates:
            cells.append(_value(panel, table, mask, update))
            if update != NONE:
                cells.append(_text(metric, table.to_none.get((mask, update))))
            cells.append(_text(metric, table.to_best.get((mask, update))))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if table.untested:
        names = ", ".join(u for u in panel.updates if u in table.untested)
        lines += [f"_Bold without a paired test (a row has no per-item evidence): {names}._", ""]
    found = gaps(panel, table)
    if found:
        lines += ["Gap to dense (total = recovered + remains):", ""]
        lines += [*(_gap_line(metric, g) for g in found), ""]
    elif panel.dense is None:
        lines += ["_No dense record of this model, eval preset and domain: no gap to dense._", ""]
    return lines


def panel_lines(panel: Panel, tables: Sequence[MetricTable]) -> list[str]:
    lines = [f"## {panel.title}", ""]
    if panel.left_out:
        lines += [f"_{panel.left_out} row(s) with settings other than the defaults left out "
                  "(see the leaderboard)._", ""]
    for table in tables:
        lines += metric_lines(panel, table)
    return lines


def _fields(estimate: Estimate | None) -> list[object]:
    if estimate is None:
        return ["", "", ""]
    low, high = estimate.interval or ("", "")
    return [estimate.value, low, high]


def csv_rows(found: Sequence[tuple[Panel, list[MetricTable]]]) -> str:
    """One row per mask and update (a group of seeds): where it sits, and per metric its value,
    its bold, and its differences to the row's `none`, to the column's best and to dense, each
    with its interval (empty where not measured or not applicable)."""
    metrics = sorted({t.metric for _, tables in found for t in tables})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = [*PLACE]
    for m in metrics:
        for suffix in FIELDS:
            head += [f"{m}{suffix}", f"{m}{suffix}_low", f"{m}{suffix}_high"]
            head += [] if suffix else [f"{m}_best"]
    writer.writerow(head)
    for panel, tables in found:
        by_metric = {t.metric: t for t in tables}
        for e in panel.entries:
            c = e.group.first
            row = [panel.model, panel.eval, panel.domain, panel.sparsity, panel.pattern, e.mask, e.update,
                   c.method, c.refine, e.joint, e.group.label, len(e.group.cells), " ".join(e.group.keys)]
            for m in metrics:
                table, key = by_metric.get(m), (e.mask, e.update)
                if table is None:
                    row += [""] * (3 * len(FIELDS) + 1)
                    continue
                row += [*_fields(e.group.estimates.get(m)), e.mask in table.best.get(e.update, ())]
                row += [*_fields(table.to_none.get(key)), *_fields(table.to_best.get(key)),
                        *_fields(table.to_dense.get(key))]
            writer.writerow(row)
    return buffer.getvalue()


def write_mask_update(cells: Sequence[RecordCell], out: Path, header: str,
                      compare: Comparisons) -> list[Path]:
    """Every mask x update file; returns the paths written (none where no panel compares)."""
    by_domain: dict[str, list[tuple[Panel, list[MetricTable]]]] = defaultdict(list)
    for panel in panels(cells):
        if panel.compared:
            by_domain[panel.domain].append((panel, [metric_table(panel, m, compare) for m in panel.metrics]))
    written = []
    for domain, found in sorted(by_domain.items()):
        lines = [f"# Mask x update: {domain}", "", header, "", LEGEND, ""]
        for panel, tables in found:
            lines += panel_lines(panel, tables)
        for name, text in ((f"{domain}-mask-update.md", "\n".join(lines).rstrip() + "\n"),
                           (f"{domain}-mask-update.csv", csv_rows(found))):
            write_atomic(out / name, text)
            written.append(out / name)
    return written
