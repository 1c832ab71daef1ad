"""The mask x update view (docs/results.md#the-mask-x-update-view): which weights a method drops and
whether the weights it keeps are updated afterwards, as two axes instead of one row label.

Per model, eval preset, domain, sparsity and pattern (a panel) the rows are masks (the method, with
` + dsnot` where DSnoT refined it) and the columns what followed them: `none`, or SparseGPT's OBS
update under the fixed mask on <source> windows, `obs(<source>)`. SparseGPT chooses its mask and
updates in one step: its row, `sparsegpt (joint)`, sits in the column of its calibration windows,
which are its update's, so that in that column the rows differ by the mask alone. A panel is shown
only where some mask has both `none` and an update: otherwise there is no update's effect to read.

Per metric (the domain's first perplexity and every general one) a panel holds each cell's value,
the update's effect (update − none, within a row), the distance to the column's best (within a
column, bold decided by compare.mark_best) and each row's gap to dense split into what the update
recovered and what remains; every difference paired over the same items (compare.Comparisons)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.leaderboard.cells import RecordCell, direction
from bench.leaderboard.compare import Comparisons, mark_best, paired_estimate
from bench.leaderboard.rows import Block, Place, Row
from bench.leaderboard.seeds import Estimate, Group, group_cells
from bench.leaderboard.table import label_cells, method_rank
from bench.results.records import finite

NONE = "none"
JOINT_METHODS = ("sparsegpt",)  # records written before `cell.update` existed name only the method
UPDATE_ORDER = (NONE, "obs(general)", "obs(mixed)", "obs(domain)")


def is_joint(cell: RecordCell) -> bool:
    """Whether the method chose its mask and updated the kept weights in one step."""
    return cell.record["cell"].get("update") == "joint" or cell.method in JOINT_METHODS


def update_column(cell: RecordCell) -> str:
    """`none`, or `obs(<source>)`: the update's windows (a joint method's: its calibration's)."""
    if is_joint(cell):
        return f"obs({cell.calib})"
    return NONE if cell.reconstruct == NONE else f"obs({cell.reconstruct})"


def mask_label(cell: RecordCell) -> str:
    """The row: the cell's leaderboard label without what the update added to it (` + obs(<x>)`,
    and ` · calib=<x>` where the update's windows are the only calibration windows the cell
    read, as for magnitude); a joint method's label without its calibration, with ` (joint)`."""
    label = cell.label
    if is_joint(cell):
        return label.replace(f" · calib={cell.calib}", "", 1) + " (joint)"
    if cell.reconstruct == NONE:
        return label
    label = label.replace(f" + obs({cell.reconstruct})", "", 1)
    mask_reads = ((cell.record.get("config") or {}).get("calib") or {}).get("source")
    return label if mask_reads else label.replace(f" · calib={cell.calib}", "", 1)


@dataclass(frozen=True)
class Entry:
    """One table cell: a mask under one update, over its seeds."""

    mask: str
    update: str
    group: Group

    @property
    def joint(self) -> bool:
        return is_joint(self.group.first)


@dataclass
class Panel(Place):
    """The entries of one model, eval preset, domain, sparsity and pattern, and the dense row."""

    entries: list[Entry]
    dense: Group | None
    left_out: int = 0  # rows with settings other than the defaults (ablations, budgets), not shown

    @property
    def masks(self) -> list[str]:
        return list(dict.fromkeys(e.mask for e in self.entries))

    @property
    def updates(self) -> list[str]:
        return sorted({e.update for e in self.entries}, key=_update_rank)

    def at(self, mask: str, update: str) -> Group | None:
        return next((e.group for e in self.entries if e.mask == mask and e.update == update), None)

    @property
    def metrics(self) -> list[str]:
        """The domain's first perplexity and every general one that some entry has."""
        names = {m for e in self.entries for m in e.group.estimates if m.endswith("/ppl")}
        domain = sorted(m for m in names if m.startswith(f"{self.domain}/"))
        return domain[:1] + sorted(m for m in names if m.startswith("general/"))

    @property
    def compared(self) -> bool:
        """Whether some mask has both `none` and an update (else the panel is not shown)."""
        updated = {e.mask for e in self.entries if e.update != NONE}
        return any(self.at(mask, NONE) is not None for mask in updated)


def _update_rank(update: str) -> tuple[int, str]:
    return UPDATE_ORDER.index(update) if update in UPDATE_ORDER else len(UPDATE_ORDER), update


def _entry_order(entry: Entry) -> tuple:
    first = entry.group.first
    return (entry.joint, method_rank(first.method), first.refine != NONE, entry.mask,
            _update_rank(entry.update))


def panels(cells: Sequence[RecordCell]) -> list[Panel]:
    """Every panel of the cells, in order, whether compared or not."""
    groups = group_cells(label_cells(cells))
    found: dict[tuple, list[Entry]] = defaultdict(list)
    for g in groups:
        if not g.reference:
            c = g.first
            found[(c.model, c.eval, c.domain, c.sparsity, c.pattern)].append(
                Entry(mask_label(c), update_column(c), g))
    dense: dict[tuple, Group] = {}
    for g in sorted((g for g in groups if g.reference), key=lambda g: g.label):
        dense.setdefault((g.first.model, g.first.eval, g.first.domain), g)
    out = []
    for place, entries in sorted(found.items()):
        # the factorial runs every method at its configured defaults: a row with a variant (an
        # ablation, another budget) would compare unequal budgets within a column
        shown = [e for e in entries if not e.group.first.variant]
        out.append(Panel(*place, entries=sorted(shown, key=_entry_order), dense=dense.get(place[:3]),
                         left_out=len({e.mask for e in entries} - {e.mask for e in shown})))
    return out


@dataclass
class MetricTable:
    """One metric of a panel: the bold per update column and the paired differences, each by
    (mask, update): to the row's `none`, to the column's point-best, and to dense."""

    metric: str
    best: dict[str, set[str]] = field(default_factory=dict)  # update -> the masks in bold
    untested: set[str] = field(default_factory=set)  # updates whose bold is the point-best alone
    to_none: dict[tuple[str, str], Estimate] = field(default_factory=dict)
    to_best: dict[tuple[str, str], Estimate] = field(default_factory=dict)
    to_dense: dict[tuple[str, str], Estimate] = field(default_factory=dict)


def _column_block(panel: Panel, update: str, metric: str) -> Block:
    rows = [Row(e.mask, e.group) for e in panel.entries if e.update == update]
    return Block(update, rows, [metric])


def _point_best(block: Block, metric: str) -> Row | None:
    ranked = [r for r in block.rows if finite(r.values.get(metric))]
    return min(ranked, key=lambda r: -direction(metric) * r.values[metric]) if ranked else None


def metric_table(panel: Panel, metric: str, compare: Comparisons) -> MetricTable:
    """Marks and differences of one metric (bootstrapped once each through `compare`)."""
    table = MetricTable(metric)
    for update in panel.updates:
        block = _column_block(panel, update, metric)
        mark_best(block, compare)
        table.best[update] = block.best.get(metric, set())
        table.untested |= {update} if block.untested else set()
        best = _point_best(block, metric)
        for row in block.rows:
            if best is not None and row is not best:
                found = paired_estimate(row.group, best.group, metric, compare)
                _put(table.to_best, (row.label, update), found)
    for e in panel.entries:
        none = panel.at(e.mask, NONE)
        if e.update != NONE and none is not None:
            _put(table.to_none, (e.mask, e.update), paired_estimate(e.group, none, metric, compare))
        if panel.dense is not None:
            _put(table.to_dense, (e.mask, e.update), paired_estimate(e.group, panel.dense, metric, compare))
    return table


def _put(found: dict[tuple[str, str], Estimate], key: tuple[str, str], estimate: Estimate | None) -> None:
    if estimate is not None:
        found[key] = estimate


def negated(estimate: Estimate) -> Estimate:
    """-x, its interval flipped."""
    interval = None if estimate.interval is None else (-estimate.interval[1], -estimate.interval[0])
    return Estimate(-estimate.value, interval)


@dataclass(frozen=True)
class Gap:
    """A mask's gap to dense under one update (perplexity points, lower is closer):
    total = mask alone − dense = recovered (mask alone − updated) + remains (updated − dense).
    A joint row has only `remains` (there is no mask alone to start from)."""

    mask: str
    update: str
    remains: Estimate
    joint: bool = False
    total: Estimate | None = None
    recovered: Estimate | None = None

    @property
    def share(self) -> float | None:
        """The part of the total gap the update recovered (point values)."""
        if self.total is None or self.recovered is None or self.total.value <= 0:
            return None
        return self.recovered.value / self.total.value


def gaps(panel: Panel, table: MetricTable) -> list[Gap]:
    """Every updated entry's gap to dense, from the table's paired differences."""
    out = []
    for e in panel.entries:
        remains = table.to_dense.get((e.mask, e.update))
        if e.update == NONE or remains is None:
            continue
        total, step = table.to_dense.get((e.mask, NONE)), table.to_none.get((e.mask, e.update))
        if e.joint or total is None or step is None:
            out.append(Gap(e.mask, e.update, remains, e.joint))
        else:
            out.append(Gap(e.mask, e.update, remains, total=total, recovered=negated(step)))
    return out
