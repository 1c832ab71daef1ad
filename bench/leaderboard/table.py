"""The leaderboard's table model: finished cell records placed on its axes (suite = model x
eval preset, per domain; block = sparsity x pattern x calibration; row = method, with the config
values that tell ablations apart), the dense model as the reference row of every block and the
best pruned method per ranked column. Rendering is render.py's, plots are plots.py's."""

from __future__ import annotations

import re
import reprlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.results.records import NOT_IN_KEY, RECORD_VERSION, BrokenRecord, finite, iter_records

METHOD_ORDER = ("dense", "magnitude", "wanda", "sparsegpt", "dpruner")
LOWER_BETTER = {"ppl", "bpb", "nll", "loss"}
HIGHER_BETTER = {"acc", "f1", "exact", "em", "accuracy"}
COST = "prune_s"  # shown beside the metrics, never ranked
# never a row's variant: where things go, and the data fingerprints (the same files read anew)
IGNORED = (*(".".join(path) for path in NOT_IN_KEY), "inputs")


def direction(metric: str) -> int:
    """-1 when lower is better (perplexity, bits per byte), +1 when higher is (accuracy, F1,
    ROUGE), 0 when unknown (shown, never marked)."""
    name = metric.rsplit("/", 1)[-1].lower()
    tokens = set(name.split("_"))
    if tokens & LOWER_BETTER:
        return -1
    if tokens & HIGHER_BETTER or name.startswith("rouge"):
        return 1
    return 0


@dataclass(frozen=True)
class Cell:
    """One finished record, placed on the leaderboard's axes."""

    path: Path
    record: dict[str, Any]
    model: str
    eval: str
    domain: str
    method: str
    sparsity: float
    pattern: str
    calib: str  # "general" for data-free methods too
    label: str = ""
    variant: str = ""  # the config values that set an ablation apart from its method's default row

    @property
    def suite(self) -> tuple[str, str]:
        return self.model, self.eval

    @property
    def setting(self) -> tuple[float, str, str] | None:
        """The block a pruned cell belongs to; None for the dense reference (every block)."""
        return None if self.reference else (self.sparsity, self.pattern, self.calib)

    @property
    def reference(self) -> bool:
        return self.method == "dense"

    def values(self) -> dict[str, float]:
        return {**self.record["metrics"], COST: self.record.get("prune", {}).get("seconds")}


class UnusableRecord(ValueError):
    """A record that reads but cannot be placed or ranked; the message says why, in one line."""


CELL_NAMES = ("model", "eval", "domain", "pruner", "pattern")  # the cell block's text fields


def _mapping(record: dict[str, Any], name: str, optional: bool = False) -> dict[str, Any]:
    value = record.get(name)
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise UnusableRecord(f"no '{name}' block" if value is None else
                             f"'{name}' is a {type(value).__name__}, not a block of named values")
    return value


def _check_cell(cell: dict[str, Any]) -> None:
    missing = [name for name in (*CELL_NAMES, "sparsity") if name not in cell]
    if missing:
        raise UnusableRecord(f"the cell block lacks {', '.join(missing)}")
    for name in CELL_NAMES:
        if not isinstance(cell[name], str) or not cell[name]:
            raise UnusableRecord(f"cell.{name} is {reprlib.repr(cell[name])}, not a name")
    sparsity = cell["sparsity"]
    if not finite(sparsity) or not 0 <= sparsity < 1:
        raise UnusableRecord(f"cell.sparsity is {reprlib.repr(sparsity)}, not a fraction in [0, 1)")
    if not isinstance(cell.get("calib"), str | None):
        raise UnusableRecord(f"cell.calib is {reprlib.repr(cell['calib'])}, not a name")


def _check_metrics(metrics: dict[str, Any]) -> None:
    if not metrics:
        raise UnusableRecord("no metrics")
    for name, value in metrics.items():
        parts = name.split("/")
        if len(parts) != 3 or not all(parts):
            raise UnusableRecord(f"metric name {name!r} is not <scope>/<task>/<metric>")
        if not finite(value):
            raise UnusableRecord(f"metric {name} is {reprlib.repr(value)}, not a finite number")


def check_record(record: dict[str, Any]) -> None:
    """Raise UnusableRecord naming the first value the leaderboard cannot use, so that one odd
    record is skipped by name instead of stopping (or silently skewing) the whole leaderboard;
    past this check, ranking, plots and CSV take the record's values as they are."""
    version = record.get("version")
    if isinstance(version, bool) or version not in range(1, RECORD_VERSION + 1):
        raise UnusableRecord(f"record version {reprlib.repr(version)}; "
                             f"this leaderboard reads versions 1 to {RECORD_VERSION}")
    if not isinstance(record.get("key"), str) or not record["key"]:
        raise UnusableRecord(f"key is {reprlib.repr(record.get('key'))}, not a name")
    _check_cell(_mapping(record, "cell"))
    _check_metrics(_mapping(record, "metrics"))
    _mapping(record, "config", optional=True)
    seconds = _mapping(record, "prune", optional=True).get("seconds")
    if seconds is not None and not finite(seconds):
        raise UnusableRecord(f"prune.seconds is {reprlib.repr(seconds)}, not a finite number")
    if not isinstance(record.get("masks"), str | None):
        raise UnusableRecord(f"masks is {reprlib.repr(record['masks'])}, not a file name")


def to_cell(path: Path, record: dict[str, Any]) -> Cell:
    """A record on the leaderboard's axes; raises UnusableRecord (see `check_record`)."""
    check_record(record)
    cell = record["cell"]
    return Cell(path=path, record=record, model=cell["model"], eval=cell["eval"], domain=cell["domain"],
                method=cell["pruner"], sparsity=float(cell["sparsity"]), pattern=cell["pattern"],
                calib=cell.get("calib") or "general")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _variants(cells: Sequence[Cell]) -> list[str]:
    """For cells that share a table row (e.g. an ablation next to the default), the config
    values that tell them apart, as `key=value` text."""
    if len(cells) == 1:
        return [""]
    flat = [_flatten(c.record.get("config", {})) for c in cells]
    keys = sorted({k for f in flat for k in f if not k.startswith(IGNORED)})
    differing = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    # each row names only where it departs from the group's most common value (an ablation's
    # default row stays bare); rows that would still read alike name every differing key
    common = {}
    for k in differing:
        counts = Counter(repr(f.get(k)) for f in flat).most_common(2)
        if counts[0][1] > counts[1][1]:  # a clear majority, not a tie
            common[k] = counts[0][0]

    def describe(f: dict[str, Any], keys: Iterable[str]) -> str:
        return ", ".join(f"{k.removeprefix('pruner.')}={f.get(k)}" for k in keys)

    short = [describe(f, (k for k in differing if repr(f.get(k)) != common.get(k))) for f in flat]
    if len(set(short)) < len(short):
        short = [describe(f, differing) for f in flat]
    if len(set(short)) < len(short):  # nothing in the config tells them apart
        short = [c.record["key"] for c in cells]
    return short


def label_cells(cells: Iterable[Cell]) -> list[Cell]:
    """Row labels: the method, `· calib=<x>` when not general, `(differing config)` for
    several cells that would otherwise share one row."""
    rows: dict[tuple, list[Cell]] = defaultdict(list)
    for c in cells:
        rows[(c.suite, c.domain, c.setting, c.method)].append(c)
    labelled = []
    for group in rows.values():
        for c, variant in zip(group, _variants(group), strict=True):
            label = c.method + (f" · calib={c.calib}" if c.calib != "general" else "")
            label += f" ({variant})" if variant else ""
            labelled.append(replace(c, label=label, variant=variant))
    return labelled


def method_rank(method: str) -> tuple[int, str]:
    """The paper's order (dense, baselines, D-Pruner), then unknown methods by name."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def metric_rank(metric: str, domain: str) -> tuple:
    """The domain's columns before the general ones; perplexity before task scores."""
    scope, task, name = (metric.split("/", 2) + ["", ""])[:3]
    preferred = ("ppl", "bpb", "acc", "macro_f1", "f1", "rouge1", "rouge2", "rougeL", "rougeLsum")
    position = preferred.index(name) if name in preferred else len(preferred)
    return (scope != domain, scope, name not in ("ppl", "bpb"), task, position, name)


def setting_rank(setting: tuple[float, str, str]) -> tuple:
    """General calibration first, unstructured before N:M, then by sparsity."""
    sparsity, pattern, calib = setting
    return (calib != "general", calib, pattern != "unstructured", pattern, sparsity)


@dataclass
class Row:
    """One table row: a cell's values ({} for a method not run at the block's setting)."""

    label: str
    values: dict[str, float | None]
    reference: bool = False


@dataclass
class Block:
    """One table: the rows of one sparsity, pattern and calibration, and the best per column."""

    title: str
    rows: list[Row]
    columns: list[str]
    best: dict[str, set[str]] = field(default_factory=dict)

    def mark_best(self) -> None:
        """Best pruned method per ranked column (ties all marked) where two or more compete;
        dense is the reference, never marked."""
        for column in self.columns:
            sign = direction(column) if column != COST else 0
            found = [(r.values[column], r.label) for r in self.rows
                     if not r.reference and finite(r.values.get(column))]
            if sign and len(found) > 1:
                target = (min if sign < 0 else max)(v for v, _ in found)
                self.best[column] = {label for v, label in found if v == target}


@dataclass
class Suite:
    """One (model, eval preset) on one domain: its blocks, and the cells behind them."""

    model: str
    eval: str
    domain: str
    cells: list[Cell]
    blocks: list[Block]

    @property
    def title(self) -> str:
        return f"{self.model} · eval={self.eval}"

    @property
    def slug(self) -> str:
        return slug(f"{self.domain}-{self.model}-{self.eval}")


def slug(text: str) -> str:
    """File-name-safe text: runs of anything but letters, digits and dots become one dash."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def build_suite(cells: list[Cell], domain: str) -> Suite:
    """The blocks of one suite: every method of a calibration source gets a row in each of its
    blocks (empty where it was not run), below the dense reference."""
    model, eval_name = cells[0].suite
    metrics = {m for c in cells for m in c.record["metrics"] if m.split("/")[0] in (domain, "general")}
    columns = sorted(metrics, key=lambda m: metric_rank(m, domain)) + [COST]
    references = sorted((c for c in cells if c.reference), key=lambda c: c.label)
    by_setting: dict[tuple, dict[str, list[Cell]]] = defaultdict(lambda: defaultdict(list))
    methods_by_calib: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        if not c.reference:
            by_setting[c.setting][c.method].append(c)
            methods_by_calib[c.calib].add(c.method)
    blocks = []
    for setting in sorted(by_setting, key=setting_rank):
        sparsity, pattern, calib = setting
        rows = [Row(f"{c.label} (reference)", c.values(), reference=True) for c in references]
        for method in sorted(methods_by_calib[calib], key=method_rank):
            found = sorted(by_setting[setting].get(method, []), key=lambda c: c.label)
            if not found:  # not run at this setting: an empty row, so the gap is visible
                suffix = f" · calib={calib}" if calib != "general" else ""
                rows.append(Row(method + suffix, {}))
            rows.extend(Row(c.label, c.values()) for c in found)
        title = f"sparsity {sparsity:g} · {pattern}" + (f" · calib={calib}" if calib != "general" else "")
        block = Block(title, rows, columns)
        block.mark_best()
        blocks.append(block)
    return Suite(model, eval_name, domain, cells, blocks)


def build(cells: Sequence[Cell]) -> dict[str, list[Suite]]:
    """{domain: [one Suite per (model, eval preset)]}."""
    grouped: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for c in label_cells(cells):
        grouped[(c.domain, c.model, c.eval)].append(c)
    out: dict[str, list[Suite]] = defaultdict(list)
    for (domain, _, _), group in sorted(grouped.items()):
        out[domain].append(build_suite(group, domain))
    return dict(out)


def read_cells(results_dir: Path) -> tuple[list[Cell], list[str]]:
    """Every usable record as a Cell, and a `skipped <path>: <why>` line for each record that
    is not (unreadable, unfinished or failing `check_record`), for the caller to show."""
    cells, skipped = [], []
    for path, record in iter_records(results_dir):
        if isinstance(record, BrokenRecord):
            skipped.append(f"skipped {path}: {str(record).removeprefix(f'{path}: ')}")
            continue
        try:
            cells.append(to_cell(path, record))
        except UnusableRecord as err:
            skipped.append(f"skipped {path}: {err}")
    return cells, skipped
