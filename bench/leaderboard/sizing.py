"""What a score can be told apart from: the chance and majority baselines of choice tasks (over
the items actually scored) with the `≈chance` marks they give, and the smallest difference each
task's item count can detect, so that a reader knows which gaps the table could not have shown."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from bench.leaderboard.cells import COST
from bench.leaderboard.rows import Block
from bench.leaderboard.seeds import Group
from bench.leaderboard.text import fmt
from bench.results.evidence import baselines, metric_samples
from core.uncertainty import detectable_difference, item_variance

CHOICE_METRICS = ("acc", "macro_f1")


def chance_levels(group: Group, metric: str) -> dict[str, float] | None:
    """{chance, majority} of a choice task's acc or macro-F1 over the items the group scored."""
    source, _, name = metric.rpartition("/")
    found = group.evidence(source)
    levels = baselines(found[0]) if found and name in CHOICE_METRICS else None
    return None if levels is None else {kind: levels[kind][name] for kind in ("chance", "majority")}


def near_chance(group: Group) -> set[str]:
    """The metrics whose interval does not clear the better of chance and majority (it includes
    it, or lies below it): not shown to beat guessing."""
    found = set()
    for column, estimate in group.estimates.items():
        levels = chance_levels(group, column) if estimate.interval else None
        if levels and estimate.interval[0] <= max(levels.values()):
            found.add(column)
    return found


def mark_near_chance(block: Block) -> None:
    for row in block.rows:
        if row.group is not None:
            row.near_chance = near_chance(row.group)


def _by_source(columns: Sequence[str]) -> dict[str, list[str]]:
    sources: dict[str, list[str]] = defaultdict(list)
    for column in columns:
        if column != COST:
            source, _, name = column.rpartition("/")
            sources[source].append(name)
    return sources


def _first_evidence(groups: Sequence[Group], source: str) -> Group | None:
    """The dense row where it has the evidence, else the first row that does."""
    ordered = sorted(groups, key=lambda g: not g.reference)
    return next((g for g in ordered if g.evidence(source)), None)


def baseline_note(groups: Sequence[Group], columns: Sequence[str]) -> str | None:
    """Each choice task's chance and majority values, for the header."""
    tasks = []
    for source, names in _by_source(columns).items():
        group = _first_evidence(groups, source)
        shown = []
        for name in names:
            levels = chance_levels(group, f"{source}/{name}") if group else None
            if levels:
                chance, majority = (fmt(f"{source}/{name}", levels[k]) for k in ("chance", "majority"))
                shown.append(f"{name} {chance} / {majority}")
        if shown:
            tasks.append(f"{source.split('/')[-1]} " + ", ".join(shown))
    return ("Chance / majority over the items scored: " + "; ".join(tasks) + ".") if tasks else None


def sizing_note(groups: Sequence[Group], columns: Sequence[str]) -> str | None:
    """Per task, the smallest true difference its items detect (two-sided 5 %, 80 % power) from
    the dense row's per-item variance (core.uncertainty.item_variance: p(1-p) for accuracy, the
    items' variance for ROUGE, the delta method's for perplexity and bits per byte)."""
    found = []
    for source, names in _by_source(columns).items():
        group = _first_evidence(groups, source)
        if group is None:
            continue
        evidence = group.evidence(source)[0]
        sized, count = [], 0
        for name in names:
            try:
                samples, statistic = metric_samples(evidence, name)
            except KeyError:  # a metric its evidence does not give
                continue
            count = len(samples[0])
            smallest = detectable_difference(item_variance(samples, statistic), count)
            sized.append(f"{name} {fmt(f'{source}/{name}', smallest)}")
        unit = "windows" if evidence["kind"] == "perplexity" else "items"
        if sized:
            found.append(f"{source.split('/')[-1]} ({count} {unit}) " + ", ".join(sized))
    if not found:
        return None
    return ("Smallest difference the items can detect (two-sided 5 %, 80 % power, per-item variance "
            "of the dense row): " + "; ".join(found) + ".")


def evidence_note(groups: Sequence[Group]) -> str | None:
    """Says when records lack per-item evidence, which leaves intervals and tests out."""
    cells = [c for g in groups for c in g.cells]
    missing = sum(1 for c in cells if not c.record.get("evidence"))
    if not missing:
        return None
    return (f"{missing} of {len(cells)} records carry no per-item evidence (records before version 3 "
            "have neither evidence nor intervals): bold among them is the point-best, without a test, "
            "and `≈chance` is not judged.")


def suite_notes(groups: Sequence[Group], columns: Sequence[str]) -> list[str]:
    """The lines above a suite's tables: missing evidence, baselines, detectable differences."""
    notes = (evidence_note(groups), baseline_note(groups, columns), sizing_note(groups, columns))
    return [note for note in notes if note]
