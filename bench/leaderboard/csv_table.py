"""The leaderboard as CSV: one row per table row (a cell, or the seeds of one folded together),
every metric of the domain with its interval ends, and where they apply the seed spread, the
`≈chance` flag and the difference to dense; empty where not measured (never a zero)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from bench.leaderboard.cells import COST
from bench.leaderboard.rows import Row, Suite
from bench.leaderboard.seeds import Group
from bench.leaderboard.sizing import chance_levels, near_chance
from bench.leaderboard.table import group_rank

PLACE = ["model", "eval", "method", "label", "sparsity", "pattern", "calib", "key", "n_seeds"]


def _columns(suites: Sequence[Suite]) -> list[tuple[str, str]]:
    """(metric, field) per column: each metric's value, then the fields some row of the domain
    fills (interval ends; seed spread; ≈chance for choice tasks; the difference to dense)."""
    metrics = list(dict.fromkeys(c for s in suites for b in s.blocks for c in b.columns)) or [COST]
    groups = [g for s in suites for g in s.groups]
    seeded = any(len(g.cells) > 1 for g in groups)
    differing = any(r.vs_dense for s in suites for b in s.blocks for r in b.rows)
    columns = []
    for m in metrics:
        fields = ["value"]
        if m != COST:
            fields += ["low", "high"] + (["seed_min", "seed_max"] if seeded else [])
            fields += ["near_chance"] if any(chance_levels(g, m) for g in groups) else []
            fields += ["vs_dense", "vs_dense_low", "vs_dense_high"] if differing else []
        columns += [(m, f) for f in fields]
    return columns


def _field(metric: str, name: str, group: Group, row: Row | None) -> object:
    """One CSV cell of a group; empty where the metric (or its difference) was not measured."""
    estimate = group.estimates.get(metric)
    if name.startswith("vs_dense"):
        estimate = row.vs_dense.get(metric) if row else None
        name = name.removeprefix("vs_dense").lstrip("_") or "value"
    if estimate is None:
        return ""
    if name == "near_chance":
        return metric in near_chance(group)
    if name == "value":
        return estimate.value
    pair = estimate.interval if name in ("low", "high") else estimate.spread
    return "" if pair is None else pair[name in ("high", "seed_max")]


def csv_text(suites: Sequence[Suite]) -> str:
    """One row per table row (dense once), in the tables' order."""
    columns = _columns(suites)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*PLACE, *(m if f == "value" else f"{m}_{f}" for m, f in columns)])
    for suite in suites:
        rows = {r.group.keys: r for b in suite.blocks for r in b.rows if r.group and not r.reference}
        for group in sorted(suite.groups, key=group_rank):
            c, row = group.first, rows.get(group.keys)
            writer.writerow([c.model, c.eval, c.method, group.label, c.sparsity, c.pattern,
                             c.record["cell"].get("calib") or "", " ".join(group.keys), len(group.cells),
                             *(_field(m, f, group, row) for m, f in columns)])
    return buffer.getvalue()
