"""The leaderboard's tables from its cells: rows labelled (the method, with the config values
that tell ablations apart; seeds of one setting share a row), ordered (methods in the paper's
order, domain metrics first), placed in blocks with the dense reference in each, and marked
(compare.py: paired bold, sizing.py: `≈chance` and the suite's notes)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from bench.defaults import configured_defaults
from bench.leaderboard.cells import COST, RecordCell
from bench.leaderboard.compare import Comparisons, differences_to_dense, mark_best
from bench.leaderboard.rows import Block, Row, Suite
from bench.leaderboard.seeds import Group, group_cells
from bench.leaderboard.sizing import mark_near_chance, suite_notes
from bench.results.records import NOT_IN_KEY

METHOD_ORDER = ("dense", "magnitude", "wanda", "ria", "sparsegpt", "dpruner")
KEYLESS = tuple(".".join(path) for path in NOT_IN_KEY)  # where things go, how they are shown
# never a row's variant: those, and the data fingerprints (the same files read anew)
IGNORED = (*KEYLESS, "inputs")
# what the cell's setting and its label already say (the block, `+ obs(<x>)`, `+ dsnot`, `· owl`)
LABELLED = ("sparsity", "pattern", "allocation", "pruner.reconstruct", "pruner.refine")
SUITE = ("model.", "eval.")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _config(cell: RecordCell, leave_out: tuple[str, ...]) -> dict[str, Any]:
    """The cell's config as flat `a.b` keys, without the seed and the settings left out."""
    flat = _flatten(cell.record.get("config", {}))
    return {k: v for k, v in flat.items() if k != "seed" and not k.startswith(leave_out)}


def _variants(cells: Sequence[RecordCell]) -> list[str]:
    """For cells that share a table row (e.g. an ablation next to the default), the config
    values that set each apart, as `key=value` text: where it departs from the configured default
    (conf/ for its method, domain and calibration; the majority where conf/ has no such key), so
    that a bare label is always the default and no label hangs on which other presets' records
    share the folder."""
    first = cells[0]
    found = configured_defaults(first.method, first.domain, first.calib)
    if len(cells) == 1 and found is None:
        return [""]
    configured = _flatten(found or {})
    shown = (*IGNORED, *LABELLED)
    defaults = {k: v for k, v in configured.items() if k != "seed" and not k.startswith(shown)}
    # a setting a record leaves out is one it ran at its default (records.cell_config), or one
    # this checkout no longer has (then the cell does not read it and names nothing)
    flat = [{**defaults, **_config(c, shown)} for c in cells]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    # a row names every departure from the default, also one all its neighbours share (but the
    # model's and the eval's settings: the suite's title names those, the default is another model)
    departing = [k for k in keys if k in defaults and not k.startswith(SUITE)
                 and any(repr(f.get(k)) != repr(defaults[k]) for f in flat)]
    reference = {k: repr(v) for k, v in defaults.items()}
    for k in (k for k in differing if k not in defaults):  # no default: the clear majority
        counts = Counter(repr(f.get(k)) for f in flat).most_common(2)
        if counts[0][1] > counts[1][1]:
            reference[k] = counts[0][0]

    def describe(f: dict[str, Any], keys: Iterable[str]) -> str:
        return ", ".join(f"{k.removeprefix('pruner.')}={f.get(k)}" for k in keys)

    named = sorted({*differing, *departing})
    short = [describe(f, (k for k in named if k in f and repr(f[k]) != reference.get(k))) for f in flat]
    if len(set(short)) < len(short):
        short = [describe(f, differing) for f in flat]
    if len(set(short)) < len(short):  # nothing in the config tells them apart
        short = [c.record["key"] for c in cells]
    return short


def _replicates(cells: Sequence[RecordCell]) -> list[list[RecordCell]]:
    """The cells that differ only by seed, together (one seed each: a repeated seed with the same
    config is another computation, e.g. of edited data, and gets a row of its own)."""
    sets: dict[str, list[list[RecordCell]]] = defaultdict(list)
    for c in cells:
        runs = sets[repr(sorted(_config(c, KEYLESS).items()))]
        free = next((run for run in runs if all(other.seed != c.seed for other in run)), None)
        if free is None:
            runs.append([c])
        else:
            free.append(c)
    return [run for runs in sets.values() for run in runs]


def label_cells(cells: Iterable[RecordCell]) -> list[RecordCell]:
    """Row labels: the method, `+ dsnot` for a refined mask, `+ obs(<x>)` for kept weights updated
    on <x> windows, `· calib=<x>` when not general, `· owl` for OWL's layer-wise sparsity,
    `(differing config)` for
    several cells that would otherwise share one row; cells that differ only by seed share
    their label (and so their row, see seeds.group_cells)."""
    rows: dict[tuple, list[RecordCell]] = defaultdict(list)
    for c in cells:
        rows[(c.suite, c.domain, c.setting, c.method, c.allocation, c.follow_up)].append(c)
    labelled = []
    for group in rows.values():
        replicates = _replicates(group)
        for run, variant in zip(replicates, _variants([run[0] for run in replicates]), strict=True):
            label = run[0].method + run[0].follow_up
            label += f" · calib={run[0].calib}" if run[0].calib != "general" else ""
            label += f" · {run[0].allocation}" if run[0].allocation != "uniform" else ""
            label += f" ({variant})" if variant else ""
            labelled += [replace(c, label=label, variant=variant) for c in run]
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


def group_rank(group: Group) -> tuple:
    """The tables' order: dense first, then by setting, method and label."""
    setting = group.first.setting or (0.0, "", "")
    return (not group.reference, setting_rank(setting), method_rank(group.first.method), group.label)


def _block(setting: tuple[float, str, str], references: list[Group], methods: list[str],
           found: dict[str, list[Group]], columns: list[str]) -> Block:
    """One block's rows: the dense references, then every method of its calibration source (an
    empty row where the method was not run at this setting, so that the gap is visible)."""
    sparsity, pattern, calib = setting
    suffix = f" · calib={calib}" if calib != "general" else ""
    rows = [Row(f"{g.label} (reference)", g, reference=True) for g in references]
    for method in methods:
        groups = sorted(found.get(method, []), key=lambda g: g.label)
        rows += [Row(g.label, g) for g in groups] if groups else [Row(method + suffix)]
    return Block(f"sparsity {sparsity:g} · {pattern}{suffix}", rows, columns)


def build_suite(cells: list[RecordCell], domain: str, compare: Comparisons, vs_dense: bool = False) -> Suite:
    """The blocks of one suite, marked (and with differences to dense when asked), and its notes."""
    model, eval_name = cells[0].suite
    metrics = {m for c in cells for m in c.record["metrics"] if m.split("/")[0] in (domain, "general")}
    columns = sorted(metrics, key=lambda m: metric_rank(m, domain)) + [COST]
    groups = group_cells(cells)
    references = sorted((g for g in groups if g.reference), key=lambda g: g.label)
    by_setting: dict[tuple, dict[str, list[Group]]] = defaultdict(lambda: defaultdict(list))
    methods_by_calib: dict[str, set[str]] = defaultdict(set)
    for g in groups:
        if not g.reference:
            by_setting[g.first.setting][g.first.method].append(g)
            methods_by_calib[g.first.calib].add(g.first.method)
    blocks = []
    for setting in sorted(by_setting, key=setting_rank):
        methods = sorted(methods_by_calib[setting[2]], key=method_rank)
        block = _block(setting, references, methods, by_setting[setting], columns)
        mark_best(block, compare)
        mark_near_chance(block)
        if vs_dense:
            differences_to_dense(block, compare)
        blocks.append(block)
    return Suite(model, eval_name, domain, cells, groups, blocks, suite_notes(groups, columns))


def build(cells: Sequence[RecordCell], vs_dense: bool = False,
          compare: Comparisons | None = None) -> dict[str, list[Suite]]:
    """{domain: [one Suite per (model, eval preset)]}; `vs_dense` adds each pruned row's paired
    difference to dense; `compare` may bring stored differences (see Comparisons)."""
    grouped: dict[tuple[str, str, str], list[RecordCell]] = defaultdict(list)
    for c in label_cells(cells):
        grouped[(c.domain, c.model, c.eval)].append(c)
    compare = compare or Comparisons()
    out: dict[str, list[Suite]] = defaultdict(list)
    for (domain, _, _), group in sorted(grouped.items()):
        out[domain].append(build_suite(group, domain, compare, vs_dense))
    return dict(out)
