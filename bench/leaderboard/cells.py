"""Finished cell records as the leaderboard reads them: each record checked (a record it cannot
use is named with the reason and skipped, never a crash or a silent skew), placed on the
leaderboard's axes as a RecordCell, with its intervals and per-item evidence where it has them."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results.evidence import Evidence
from bench.results.records import RECORD_VERSION, BrokenRecord, finite, iter_records

# version 3 (metrics_ci, evidence) is read even where records.py does not write it yet
NEWEST = max(RECORD_VERSION, 3)
LOWER_BETTER = {"ppl", "bpb", "nll", "loss"}
HIGHER_BETTER = {"acc", "f1", "exact", "em", "accuracy"}
COST = "prune_s"  # shown beside the metrics, never ranked
CELL_NAMES = ("model", "eval", "domain", "pruner", "pattern")  # the cell block's text fields
EVIDENCE_ARRAYS = {"perplexity": ("nll", "tokens", "bytes"), "choice": ("ids", "gold", "pred"),
                   "generation": ("ids",)}


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
class RecordCell:
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

    @property
    def allocation(self) -> str:
        """How the sparsity was spread over the layers (records from before OWL: uniform)."""
        return self.record["cell"].get("allocation", "uniform")

    @property
    def reconstruct(self) -> str:
        """The kept weights' update's source (`pruner.reconstruct`; none before it existed)."""
        return (self.record.get("config") or {}).get("pruner", {}).get("reconstruct", "none")

    @property
    def refine(self) -> str:
        """The mask's refinement (`pruner.refine`; none before it existed)."""
        return (self.record.get("config") or {}).get("pruner", {}).get("refine", "none")

    @property
    def follow_up(self) -> str:
        """What followed the mask, as a label suffix: ` + dsnot`, ` + obs(mixed)`, or ''."""
        parts = ([self.refine] if self.refine != "none" else [])
        parts += [f"obs({self.reconstruct})"] if self.reconstruct != "none" else []
        return "".join(f" + {part}" for part in parts)

    @property
    def seed(self) -> int | None:
        return self.record["cell"].get("seed", self.record.get("config", {}).get("seed"))

    def values(self) -> dict[str, float]:
        return {**self.record["metrics"], COST: self.record.get("prune", {}).get("seconds")}

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The record's 95 % interval of a metric (version 3), None where it has none."""
        found = self.record.get("metrics_ci", {}).get(metric)
        return None if found is None else (float(found[0]), float(found[1]))

    def evidence(self, source: str) -> Evidence | None:
        """Per-item arrays of one source (`<scope>/<task>`, version 3), None where absent."""
        return self.record.get("evidence", {}).get(source)


class UnusableRecord(ValueError):
    """A record that reads but cannot be placed or ranked; the message says why, in one line."""


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
    seed = cell.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int | None):
        raise UnusableRecord(f"cell.seed is {reprlib.repr(seed)}, not a whole number")


def _check_metrics(metrics: dict[str, Any]) -> None:
    if not metrics:
        raise UnusableRecord("no metrics")
    for name, value in metrics.items():
        parts = name.split("/")
        if len(parts) != 3 or not all(parts):
            raise UnusableRecord(f"metric name {name!r} is not <scope>/<task>/<metric>")
        if not finite(value):
            raise UnusableRecord(f"metric {name} is {reprlib.repr(value)}, not a finite number")


def _check_intervals(intervals: Mapping[str, Any]) -> None:
    for name, ends in intervals.items():
        if not (isinstance(ends, list) and len(ends) == 2 and all(map(finite, ends)) and ends[0] <= ends[1]):
            raise UnusableRecord(f"metrics_ci {name} is {reprlib.repr(ends)}, not [low, high]")


def _check_evidence(evidence: Mapping[str, Any]) -> None:
    """Known kinds with their arrays, one entry per item, so that bootstraps never fail midway."""
    for source, arrays in evidence.items():
        kind = arrays.get("kind") if isinstance(arrays, dict) else None
        if kind not in EVIDENCE_ARRAYS:
            raise UnusableRecord(f"evidence {source} is not per-item arrays of a known kind")
        lists = [arrays.get(name) for name in EVIDENCE_ARRAYS[kind]]
        lengths = {len(v) for v in arrays.values() if isinstance(v, list)}
        if not all(isinstance(v, list) for v in lists) or len(lengths) != 1:
            raise UnusableRecord(f"evidence {source} ({kind}) lacks {'/'.join(EVIDENCE_ARRAYS[kind])} "
                                 "arrays of one length")
        if kind == "choice":
            _check_choices(source, arrays)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_choices(source: str, arrays: Mapping[str, Any]) -> None:
    """The number of choices the chance level is taken from: the largest (every record) and each
    item's (records written since chance is per item; one per item, checked above)."""
    choices = arrays.get("n_choices")
    if not _count(choices):
        raise UnusableRecord(f"evidence {source} n_choices is {reprlib.repr(choices)}, not a count")
    per_item = arrays.get("item_choices")
    if per_item is not None and not (isinstance(per_item, list) and all(map(_count, per_item))):
        raise UnusableRecord(f"evidence {source} item_choices is {reprlib.repr(per_item)}, not counts")


def _check_allocation(block: Mapping[str, Any], cell: Mapping[str, Any]) -> None:
    """uniform, or owl with one outlier ratio and one sparsity per layer (drawn in a plot)."""
    kind = block.get("kind", "uniform")
    if kind != cell.get("allocation", "uniform") or kind not in ("uniform", "owl"):
        raise UnusableRecord(f"allocation {reprlib.repr(kind)} is not uniform or owl, or not the cell's")
    if kind == "owl":
        lists = [block.get(name) for name in ("outlier_ratios", "sparsities")]
        if not all(isinstance(v, list) and v and all(map(finite, v)) for v in lists) or \
                len(lists[0]) != len(lists[1]):
            raise UnusableRecord("allocation owl lacks outlier_ratios / sparsities: numbers, one per layer")


def check_record(record: dict[str, Any]) -> None:
    """Raise UnusableRecord naming the first value the leaderboard cannot use, so that one odd
    record is skipped by name instead of stopping (or silently skewing) the whole leaderboard;
    past this check, ranking, plots and CSV take the record's values as they are."""
    version = record.get("version")
    if isinstance(version, bool) or version not in range(1, NEWEST + 1):
        raise UnusableRecord(f"record version {reprlib.repr(version)}; "
                             f"this leaderboard reads versions 1 to {NEWEST}")
    if not isinstance(record.get("key"), str) or not record["key"]:
        raise UnusableRecord(f"key is {reprlib.repr(record.get('key'))}, not a name")
    _check_cell(_mapping(record, "cell"))
    _check_metrics(_mapping(record, "metrics"))
    _check_intervals(_mapping(record, "metrics_ci", optional=True))
    _check_evidence(_mapping(record, "evidence", optional=True))
    _check_allocation(_mapping(record, "allocation", optional=True), record["cell"])
    _mapping(record, "config", optional=True)
    seconds = _mapping(record, "prune", optional=True).get("seconds")
    if seconds is not None and not finite(seconds):
        raise UnusableRecord(f"prune.seconds is {reprlib.repr(seconds)}, not a finite number")
    if not isinstance(record.get("masks"), str | None):
        raise UnusableRecord(f"masks is {reprlib.repr(record['masks'])}, not a file name")


def to_cell(path: Path, record: dict[str, Any]) -> RecordCell:
    """A record on the leaderboard's axes; raises UnusableRecord (see `check_record`)."""
    check_record(record)
    cell = record["cell"]
    return RecordCell(path=path, record=record, model=cell["model"], eval=cell["eval"], domain=cell["domain"],
                method=cell["pruner"], sparsity=float(cell["sparsity"]), pattern=cell["pattern"],
                calib=cell.get("calib") or "general")


def read_cells(results_dir: Path) -> tuple[list[RecordCell], list[str]]:
    """Every usable record as a RecordCell, and a `skipped <path>: <why>` line for each record that
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
