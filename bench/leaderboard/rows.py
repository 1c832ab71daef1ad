"""The leaderboard's table model: a Suite (model x eval preset, on one domain) holds Blocks (one
sparsity, pattern and calibration each) of Rows (one method, or an ablation of it, over its seeds),
with the marks that table.py, compare.py and sizing.py decide and the renderers show."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bench.leaderboard.cells import RecordCell
from bench.leaderboard.seeds import Estimate, Group


@dataclass
class Row:
    """One table row: a group of seeds, or None for a method not run at the block's setting."""

    label: str
    group: Group | None = None
    reference: bool = False
    near_chance: set[str] = field(default_factory=set)  # metrics not shown above chance / majority
    vs_dense: dict[str, Estimate] = field(default_factory=dict)  # pruned - dense (--vs-dense)

    @property
    def estimates(self) -> dict[str, Estimate]:
        return self.group.estimates if self.group else {}

    @property
    def values(self) -> dict[str, float]:
        return {name: estimate.value for name, estimate in self.estimates.items()}


@dataclass
class Block:
    """One table: the rows of one sparsity, pattern and calibration, and the best per column."""

    title: str
    rows: list[Row]
    columns: list[str]
    best: dict[str, set[str]] = field(default_factory=dict)  # column -> the labels marked best
    untested: set[str] = field(default_factory=set)  # columns marked by point value alone


@dataclass
class Suite:
    """One (model, eval preset) on one domain: its blocks, the cells and seed groups behind them,
    and what the reader needs to weigh the numbers (baselines, detectable differences)."""

    model: str
    eval: str
    domain: str
    cells: list[RecordCell]
    groups: list[Group]
    blocks: list[Block]
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.model} · eval={self.eval}"

    @property
    def slug(self) -> str:
        return slug(f"{self.domain}-{self.model}-{self.eval}")


@dataclass
class Place:
    """Where a panel of the budget and mask x update views sits: one model, eval preset, domain,
    sparsity and pattern."""

    model: str
    eval: str
    domain: str
    sparsity: float
    pattern: str

    @property
    def title(self) -> str:
        return f"{self.model} · eval={self.eval} · sparsity {self.sparsity:g} · {self.pattern}"

    @property
    def slug(self) -> str:
        return slug(f"{self.domain}-{self.model}-{self.eval}-s{self.sparsity:g}-{self.pattern}")


def slug(text: str) -> str:
    """File-name-safe text: runs of anything but letters, digits and dots become one dash."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")
