"""Which differences are real: paired differences between rows scored on the same items, the
bold marks they decide, and (on request) every pruned row's difference to dense.

Bold: in each block and ranked column, the best pruned row by point value is bold alone where its
paired difference to the runner-up excludes zero; otherwise every row whose paired difference to
the best includes zero shares the mark. Where a row lacks per-item evidence (records before
version 3) the column falls back to the point-best, and the block lists it as untested."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

from bench.leaderboard.cells import COST, direction
from bench.leaderboard.rows import Block, Row
from bench.leaderboard.seeds import Estimate, Group, Z, between_seeds, standard_error
from bench.results.evidence import paired_difference, seeds_difference
from bench.results.records import finite
from core.files import Damaged, discard_damaged, write_atomic
from core.uncertainty import LEVEL, RESAMPLES, SEED

Difference = tuple[float, float, float]  # (a - b, low, high)
SETTINGS = [1, LEVEL, RESAMPLES, SEED]  # a stored difference holds for these only (1: this layout)


def difference(a: Group, b: Group, metric: str) -> Difference | None:
    """a - b with a paired 95 % interval over the items both scored; None without evidence on
    both sides or on other items. With several seeds the items are resampled jointly across all
    seeds of both rows (evidence.seeds_difference) and the interval is widened by each side's
    seed-to-seed variance / k, as in seeds.combine."""
    source, _, name = metric.rpartition("/")
    found_a, found_b = a.evidence(source), b.evidence(source)
    if found_a is None or found_b is None:
        return None
    try:
        if len(found_a) == len(found_b) == 1:
            return paired_difference(found_a[0], found_b[0], name)
        value, low, high = seeds_difference(found_a, found_b, name)
    except (KeyError, ValueError):  # a metric the evidence does not give, or other items
        return None
    variance = (standard_error((low, high)) ** 2 + between_seeds(a.seed_values(metric))
                + between_seeds(b.seed_values(metric)))
    half = Z * math.sqrt(variance)
    return value, value - half, value + half


class Comparisons:
    """Paired differences, each bootstrapped once (0.1-2 s apiece): a - b and b - a are one
    bootstrap, and with a `stored` file (JSON, by a digest of both rows' evidence, their seed
    values, the metric and the bootstrap's settings) a rebuild bootstraps only new pairs."""

    def __init__(self, stored: Path | None = None) -> None:
        self._found: dict[tuple, Difference | None] = {}
        self._stored_path = stored
        self._stored = _read(stored)
        self._new: dict[str, list[float] | None] = {}
        self._digests: dict[tuple, str] = {}

    def __call__(self, a: Group, b: Group, metric: str) -> Difference | None:
        if b.keys < a.keys:
            found = self(b, a, metric)
            return None if found is None else (-found[0], -found[2], -found[1])
        key = (a.keys, b.keys, metric)
        if key not in self._found:
            self._found[key] = self._look_up(a, b, metric)
        return self._found[key]

    def _look_up(self, a: Group, b: Group, metric: str) -> Difference | None:
        source = metric.rpartition("/")[0]
        if self._stored_path is None or a.evidence(source) is None or b.evidence(source) is None:
            return difference(a, b, metric)
        pair = json.dumps([SETTINGS, metric, self._digest(a, source), self._digest(b, source),
                           a.seed_values(metric), b.seed_values(metric)])
        digest = hashlib.sha256(pair.encode()).hexdigest()
        if digest not in self._stored:
            found = difference(a, b, metric)
            self._stored[digest] = self._new[digest] = None if found is None else list(found)
        found = self._stored[digest]
        return None if found is None else (found[0], found[1], found[2])

    def _digest(self, group: Group, source: str) -> str:
        """The content of a row's evidence for one source (all seeds), hashed once per build."""
        key = (group.keys, source)
        if key not in self._digests:
            text = json.dumps(group.evidence(source), sort_keys=True)
            self._digests[key] = hashlib.sha256(text.encode()).hexdigest()
        return self._digests[key]

    def save(self) -> None:
        """Add this build's new differences to the stored file (merged with what another build
        may have written meanwhile; written atomically); a file that cannot be written is a
        warning, the leaderboard being built already."""
        if self._stored_path is None or not self._new:
            return
        try:
            write_atomic(self._stored_path, json.dumps({**_read(self._stored_path), **self._new}))
        except OSError as err:
            print(f"warning: paired differences not stored in {self._stored_path} "
                  f"({err.strerror or err}); the next build bootstraps them again", file=sys.stderr)


def _read(path: Path | None) -> dict[str, list[float] | None]:
    """The stored differences; an absent file is an empty store, a damaged one is discarded with
    one warning (as every cache is) and its differences are bootstrapped again."""
    if path is None or not path.is_file():
        return {}
    try:
        return _stored_differences(path)
    except Damaged as err:
        discard_damaged("paired-difference cache", err, path)
        return {}


def _stored_differences(path: Path) -> dict[str, list[float] | None]:
    """The file's differences; Damaged when it is not JSON or holds anything else."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Damaged(f"unreadable: {err}") from err
    if not isinstance(found, dict):
        raise Damaged("not a table of differences")
    bad = [k for k, v in found.items()
           if not (v is None or (isinstance(v, list) and len(v) == 3 and all(map(finite, v))))]
    if bad:
        raise Damaged(f"{len(bad)} of {len(found)} entries are not [difference, low, high]")
    return found


def paired_estimate(a: Group, b: Group, metric: str, compare: Comparisons) -> Estimate | None:
    """a - b as a table shows it: with the paired interval where both rows have evidence, the
    plain difference where either lacks it, None where either lacks the metric."""
    value_a, value_b = a.estimates.get(metric), b.estimates.get(metric)
    if value_a is None or value_b is None:
        return None
    found = compare(a, b, metric)
    if found is None:
        return Estimate(value_a.value - value_b.value)
    return Estimate(found[0], (found[1], found[2]))


def excludes_zero(found: Difference) -> bool:
    return found[1] > 0 or found[2] < 0


def _tested_marks(ranked: list[Row], column: str, compare: Comparisons) -> set[str] | None:
    """The labels bold under the paired rule (module docstring); None when a pair it needs has no
    evidence. Only the pairs with the best are bootstrapped, the runner-up's first."""
    best, runner_up = ranked[0], ranked[1]
    first = compare(best.group, runner_up.group, column)
    if first is None:
        return None
    if excludes_zero(first):
        return {best.label}
    found = [compare(row.group, best.group, column) for row in ranked[1:]]
    if any(f is None for f in found):
        return None
    shared = {row.label for row, f in zip(ranked[1:], found, strict=True) if not excludes_zero(f)}
    return {best.label} | shared


def mark_best(block: Block, compare: Comparisons) -> None:
    """Bold per ranked column where two or more pruned rows compete; dense is the reference,
    never marked; without evidence the point-best (ties all), the column noted as untested."""
    for column in block.columns:
        sign = direction(column) if column != COST else 0
        ranked = sorted((r for r in block.rows if not r.reference and finite(r.values.get(column))),
                        key=lambda r: -sign * r.values[column])
        if not sign or len(ranked) < 2:
            continue
        marked = _tested_marks(ranked, column, compare)
        if marked is None:
            top = ranked[0].values[column]
            marked = {r.label for r in ranked if r.values[column] == top}
            block.untested.add(column)
        block.best[column] = marked


def differences_to_dense(block: Block, compare: Comparisons) -> None:
    """Every pruned row's metric minus the block's (first) dense row's, with the paired interval;
    the plain difference, without an interval, where the records carry no evidence."""
    dense = next((r for r in block.rows if r.reference), None)
    if dense is None:
        return
    for row in block.rows:
        if row.reference or row.group is None:
            continue
        for column in block.columns:
            if column == COST or column not in row.values or column not in dense.values:
                continue
            found = compare(row.group, dense.group, column)
            row.vs_dense[column] = (Estimate(row.values[column] - dense.values[column]) if found is None
                                    else Estimate(found[0], (found[1], found[2])))
