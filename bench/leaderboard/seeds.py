"""Rows of one or more seeds: cells that differ only by `seed` fold into one Group, shown as the
mean over seeds, the lowest and highest seed, and an interval holding item and seed variation.

The interval: variance = the mean over seeds of the item-level variance (se_s², se_s the
half-width of seed s's interval / 1.96) + the variance between seeds / k; mean ± 1.96·sqrt,
cut to the values the metric can take (scores in [0, 1], perplexity ≥ 1, bits per byte ≥ 0).
Every seed scores the same items, so the item part is shared by all seeds and does not shrink
with more of them; only the seed-to-seed part averages down as 1/k."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import stats

from bench.leaderboard.cells import COST, RecordCell
from bench.results.evidence import Evidence
from bench.results.records import finite
from core.uncertainty import LEVEL

Z = float(stats.norm.ppf(0.5 + LEVEL / 2))  # 1.96


@dataclass(frozen=True)
class Estimate:
    """A row's number: the value (the mean over seeds), its interval, and with several seeds
    the lowest and highest seed's value."""

    value: float
    interval: tuple[float, float] | None = None
    spread: tuple[float, float] | None = None


def standard_error(interval: tuple[float, float]) -> float:
    """The standard error a 95 % interval stands for."""
    return (interval[1] - interval[0]) / (2 * Z)


def between_seeds(values: Sequence[float]) -> float:
    """The seed part of the variance of a mean over seeds: their sample variance over k (0 for one)."""
    return float(np.var(values, ddof=1)) / len(values) if len(values) > 1 else 0.0


def metric_range(metric: str) -> tuple[float, float]:
    """Where a metric's values lie: perplexity >= 1, bits per byte >= 0, every score in [0, 1]."""
    return {"ppl": (1.0, math.inf), "bpb": (0.0, math.inf)}.get(metric.rsplit("/", 1)[-1], (0.0, 1.0))


def combine(values: Sequence[float], intervals: Sequence[tuple[float, float] | None],
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """One seed: its value and interval as recorded. Several: see the module's docstring; no
    interval unless every seed has one (an item part from some seeds only would understate it).
    The normal interval is cut to `bounds`: a ROUGE mean near 0 does not reach below it."""
    if len(values) == 1:
        return Estimate(values[0], intervals[0])
    average, spread = float(np.mean(values)), (min(values), max(values))
    if any(i is None for i in intervals):
        return Estimate(average, None, spread)
    variance = float(np.mean([standard_error(i) ** 2 for i in intervals])) + between_seeds(values)
    half = Z * math.sqrt(variance)
    return Estimate(average, (max(average - half, bounds[0]), min(average + half, bounds[1])), spread)


@dataclass(frozen=True)
class Group:
    """The cells of one table row: the same cell but for its seed, in order of seed."""

    cells: tuple[RecordCell, ...]

    @property
    def first(self) -> RecordCell:
        return self.cells[0]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.record["key"] for c in self.cells)

    @property
    def label(self) -> str:
        """The cells' label, with the seed count where there are several."""
        k = len(self.cells)
        return self.first.label + (f" ({k} seeds)" if k > 1 else "")

    @property
    def reference(self) -> bool:
        return self.first.reference

    @cached_property
    def estimates(self) -> dict[str, Estimate]:
        """Every metric measured by all of the seeds; the pruning time as a plain mean."""
        names = {m for c in self.cells for m in c.values()}
        out = {}
        for name in names:
            values = [c.values().get(name) for c in self.cells]
            if all(finite(v) for v in values):
                out[name] = (Estimate(float(np.mean(values))) if name == COST
                             else combine(values, [c.interval(name) for c in self.cells], metric_range(name)))
        return out

    def seed_values(self, metric: str) -> list[float]:
        return [c.values()[metric] for c in self.cells]

    def evidence(self, source: str) -> list[Evidence] | None:
        """The source's per-item arrays under every seed; None unless all seeds have them."""
        found = [c.evidence(source) for c in self.cells]
        return None if any(e is None for e in found) else found


def group_cells(cells: Iterable[RecordCell]) -> list[Group]:
    """Labelled cells (table.label_cells gives cells that differ only by seed one label, and
    any others apart) folded into Groups, in the order their first cell comes."""
    groups: dict[tuple, list[RecordCell]] = defaultdict(list)
    for c in cells:
        groups[(c.suite, c.domain, c.setting, c.method, c.label)].append(c)
    return [Group(tuple(sorted(found, key=lambda c: (c.seed is None, c.seed or 0))))
            for found in groups.values()]
