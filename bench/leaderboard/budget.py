"""The budget views (docs/budget.md): methods compared at what their calibration consumed, not at
one point. Per model, eval preset, domain, sparsity and pattern (a panel): budget curves (quality
against domain tokens), cost fronts (against prune seconds and peak memory), an equal-budget table
(at each domain-token level, every method's paired difference to the best; and at equal window
counts where those split methods that read the same windows) and retention (domain gain against
general loss relative to dense, with the Pareto front).

A panel's x is the domain tokens seen: the distinct domain tokens drawn times the passes over them
(D-Pruner's epochs), so that more windows and more epochs over the same windows share one axis.
A record without a `budget` (written before budgets) gets one derived from its config where that
is exact (`derived_budget`); one where it is not is left out of these views."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench.leaderboard.cells import RecordCell, direction
from bench.leaderboard.compare import Comparisons, mark_best
from bench.leaderboard.rows import Block, Place, Row
from bench.leaderboard.seeds import Estimate, Group, group_cells
from bench.leaderboard.table import IGNORED, _config, _variants, label_cells, method_rank
from bench.results.records import budget_block, finite
from core.errors import ConfigError
from pruners import Allocation, from_config

# the config values that set a budget: the windows drawn and the passes over them; cells that
# differ only in these (and the seed) are points of one series
BUDGET_KEYS = ("calib.nsamples", "calib.seqlen", "calib.mix", "pruner.domain_calib", "pruner.epochs")


def derived_budget(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """An older record's budget from its stored config: its method rebuilt and asked for the
    windows it reads (Pruner.budget, the rules a run counts with), the prune cost copied; None
    where the config no longer builds a method (e.g. an option since renamed)."""
    config = record.get("config")
    if not isinstance(config, dict):
        return None
    try:
        pruner = from_config(config["pruner"], sparsity=config["sparsity"], pattern=config["pattern"],
                             allocation=Allocation.of(config.get("allocation"), config.get("owl")))
        # settings a method does not read are not stored (cell_config); any value stands for them
        consumed = pruner.budget(pruner.calibration_requests({"source": "general", "mix": 0.5,
                                                              **(config.get("calib") or {})}))
    except (ConfigError, KeyError, TypeError, ValueError, ImportError):
        return None
    return budget_block(consumed, (record.get("prune") or {}).get("seconds"), record.get("memory"),
                        derived=True)


def record_budget(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The budget the record states, else the one derived from its config (None: neither)."""
    stated = record.get("budget")
    return stated if isinstance(stated, dict) else derived_budget(record)


def _mean(values: Sequence[Any]) -> float | None:
    """The mean over seeds; None unless every seed has the number."""
    return sum(values) / len(values) if values and all(finite(v) for v in values) else None


@dataclass(frozen=True)
class Point:
    """One row of seeds at one budget: its series (the method, without its budget settings)."""

    series: str
    group: Group
    budgets: tuple[dict[str, Any], ...]  # one per seed, in the group's order

    @property
    def label(self) -> str:
        return self.group.label

    def seen(self, source: str) -> int:
        """The tokens of a source run through the model: distinct tokens times passes."""
        budget = self.budgets[0]
        return int(budget["tokens"][source]) * int(budget["passes"][source])

    @property
    def domain_tokens(self) -> int:
        return self.seen("domain")

    @property
    def windows(self) -> tuple[int, int] | None:
        """(windows, tokens per window) of its largest window set that holds domain text: the level
        a preset names by its window count. A method reading several such sets (D-Pruner's domain
        windows and its update's mixed ones) counts more domain tokens than one reading a single
        set of that size, so the equal-token tables never place them side by side; this does."""
        sets = [w for w in (self.budgets[0].get("windows") or {}).values() if w.get("domain_windows")]
        if not sets:
            return None
        top = max(sets, key=lambda w: (w["windows"], w["seqlen"]))
        return int(top["windows"]), int(top["seqlen"])

    @property
    def seconds(self) -> float | None:
        return _mean([b.get("prune_seconds") for b in self.budgets])

    @property
    def memory_mb(self) -> float | None:
        return _mean([b.get("peak_memory_mb") for b in self.budgets])

    @property
    def derived(self) -> bool:
        return any(b.get("derived") for b in self.budgets)

    def estimate(self, metric: str) -> Estimate | None:
        return self.group.estimates.get(metric)

    def value(self, metric: str) -> float | None:
        found = self.estimate(metric)
        return None if found is None else found.value


@dataclass
class Panel(Place):
    """The points of one model, eval preset, domain, sparsity and pattern, and the dense row."""

    points: list[Point]
    dense: Group | None

    @property
    def levels(self) -> list[int]:
        """The distinct domain-token levels, ascending."""
        return sorted({p.domain_tokens for p in self.points})

    def metrics(self, scope: str) -> list[str]:
        """The perplexities of a scope (the domain, or `general`) that some point has."""
        return sorted({m for p in self.points for m in p.group.estimates
                       if m.startswith(f"{scope}/") and m.endswith("/ppl")})

    def at(self, level: int) -> list[Point]:
        return [p for p in self.points if p.domain_tokens == level]

    def window_levels(self) -> list[tuple[int, int]]:
        """The (windows, tokens per window) levels whose points the equal-token tables split:
        those where an equal-windows table shows a comparison no equal-token table holds."""
        token_sets = [{p.label for p in self.at(level)} for level in self.levels]
        levels = sorted({p.windows for p in self.points if p.windows is not None})
        return [w for w in levels if {p.label for p in self.at_windows(w)} not in token_sets
                and len(self.at_windows(w)) > 1]

    def at_windows(self, level: tuple[int, int]) -> list[Point]:
        return [p for p in self.points if p.windows == level]


def _base_label(cell: RecordCell) -> str:
    """The row label without its variant (the config values that set its row apart)."""
    return cell.label.removesuffix(f" ({cell.variant})") if cell.variant else cell.label


def _without_budget(node: Any, prefix: str = "") -> Any:
    """A config without its BUDGET_KEYS."""
    if not isinstance(node, dict):
        return node
    return {key: _without_budget(value, f"{prefix}{key}.") for key, value in node.items()
            if f"{prefix}{key}" not in BUDGET_KEYS}


def series_names(groups: Sequence[Group]) -> dict[tuple[str, ...], str]:
    """Each pruned group's series, by its keys: its label without the budget settings, i.e. as
    table.label_cells would label it if the cells differed in nothing else (an ablation that
    changes anything but the budget stays a line of its own)."""
    members: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups:
        members[(g.first.suite, g.first.domain, g.first.setting, _base_label(g.first))].append(g)
    names = {}
    for (*_, base), found in members.items():
        stripped = [replace(g.first, record={**g.first.record,
                                             "config": _without_budget(g.first.record.get("config", {}))})
                    for g in found]
        configs = [repr(sorted(_config(c, IGNORED).items())) for c in stripped]
        distinct = list(dict.fromkeys(configs))
        representatives = [stripped[configs.index(config)] for config in distinct]
        variants = dict(zip(distinct, _variants(representatives), strict=True))
        for g, config in zip(found, configs, strict=True):
            names[g.keys] = f"{base} ({variants[config]})" if variants[config] else base
    return names


def _order(point: Point) -> tuple:
    return method_rank(point.group.first.method), point.series, point.domain_tokens


def panels(cells: Sequence[RecordCell]) -> tuple[list[Panel], int]:
    """The panels of the cells, with points where every seed has a budget; and how many rows
    were left out for want of one."""
    groups = group_cells(label_cells(cells))
    pruned = [g for g in groups if not g.reference]
    names = series_names(pruned)
    found: dict[tuple, list[Point]] = defaultdict(list)
    missing = 0
    for g in pruned:
        budgets = [record_budget(c.record) for c in g.cells]
        if any(b is None for b in budgets):
            missing += 1
            continue
        c = g.first
        place = (c.model, c.eval, c.domain, c.sparsity, c.pattern)
        found[place].append(Point(names[g.keys], g, tuple(budgets)))
    dense: dict[tuple, Group] = {}
    for g in sorted((g for g in groups if g.reference), key=lambda g: g.label):
        dense.setdefault((g.first.model, g.first.eval, g.first.domain), g)
    out = [Panel(*place, points=sorted(points, key=_order), dense=dense.get(place[:3]))
           for place, points in sorted(found.items())]
    return out, missing


def spans_budgets(panel: Panel) -> bool:
    """Whether the panel has more than one domain-token level (else there is no curve to draw)."""
    return len(panel.levels) > 1


def level_block(panel: Panel, title: str, points: Sequence[Point], compare: Comparisons) -> Block:
    """Points at one level (equal domain tokens, or equal windows) as a leaderboard block, bold
    decided as in every table (compare.mark_best: alone only where the paired test separates it)."""
    columns = panel.metrics(panel.domain) + panel.metrics("general")
    block = Block(title, [Row(p.label, p.group) for p in points], columns)
    mark_best(block, compare)
    return block


def best_point(points: Sequence[Point], metric: str) -> Point | None:
    """The point-best at a metric (None where fewer than two points have it)."""
    ranked = [p for p in points if finite(p.value(metric))]
    if len(ranked) < 2 or not direction(metric):
        return None
    return min(ranked, key=lambda p: -direction(metric) * p.value(metric))


def to_best(point: Point, best: Point | None, metric: str, compare: Comparisons) -> Estimate | None:
    """The point minus the best at its level, with the paired interval where both have evidence."""
    if best is None or point is best or not finite(point.value(metric)):
        return None
    found = compare(point.group, best.group, metric)
    if found is None:
        return Estimate(point.value(metric) - best.value(metric))
    return Estimate(found[0], (found[1], found[2]))


def retention(panel: Panel, point: Point) -> tuple[float, float] | None:
    """(domain gain, general loss) relative to dense on the first domain and general perplexity:
    gain = 1 - ppl / dense ppl (negative: worse than dense), loss = ppl / dense ppl - 1."""
    domain, general = panel.metrics(panel.domain), panel.metrics("general")
    if panel.dense is None or not domain or not general:
        return None
    dense = panel.dense.estimates
    values = [point.value(domain[0]), point.value(general[0])]
    references = [dense.get(domain[0]), dense.get(general[0])]
    if not all(finite(v) for v in values) or any(r is None for r in references):
        return None
    return 1 - values[0] / references[0].value, values[1] / references[1].value - 1


def pareto(scores: Mapping[str, tuple[float, float]]) -> set[str]:
    """The labels no other point dominates (at least the gain and at most the loss, one strictly)."""
    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    return {label for label, score in scores.items()
            if not any(dominates(other, score) for other in scores.values())}


def front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower-left front of (cost, perplexity) points, by cost: each cheaper than the next and
    better than every cheaper one."""
    out: list[tuple[float, float]] = []
    for cost, value in sorted(points):
        if not out or value < out[-1][1]:
            out.append((cost, value))
    return out
