"""Leaderboard tables and plots from every finished cell record.

    python -m bench.leaderboard [RESULTS_DIR] [--out results/leaderboard] [--vs-dense]
                                [--cache FILE | --no-cache] [--wandb] [--budget] [--mask-update]

Per domain: `<domain>.md`, `<domain>.csv` and a self-contained `<domain>.html` (plots inlined),
methods x metrics in one block per sparsity/pattern (and calibration, where not general), the
dense model as the reference row of every block, each value with its 95 % interval where the
record has one, cells that differ only by seed folded into one row, and the best pruned method per
column in bold, alone only where a paired test on the same items tells it from the runner-up
(bootstrapped differences are stored by content in `--cache`, so a rebuild redoes only new pairs).
A cell that was not run, or a metric it did not measure, is an empty cell, never a zero.
A record it cannot use (unreadable, unfinished, another record version, a malformed `cell` block,
a metric that is not a finite number) is named on stderr, `skipped <path>: <why>`, and the rest
is still built; only a folder with nothing usable is an error.
`--budget` adds the budget views (`<domain>-budget.md|csv` and their figures, docs/budget.md) for
every model, eval preset, sparsity and pattern whose records span more than one domain-token level.
`--mask-update` adds the mask x update view (`<domain>-mask-update.md|csv`, docs/results.md): masks
against what followed them (none, or an OBS update of the kept weights), SparseGPT beside them, for
every panel where some mask has both, with paired differences and each mask's gap to dense."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.leaderboard import plots
from bench.leaderboard.cells import RecordCell, read_cells
from bench.leaderboard.compare import Comparisons
from bench.leaderboard.csv_table import csv_text
from bench.leaderboard.mask_update_pages import write_mask_update
from bench.leaderboard.render import html_page, markdown
from bench.leaderboard.rows import Suite, slug
from bench.leaderboard.seeds import group_cells
from bench.leaderboard.table import build, label_cells, method_rank
from bench.results.tracking import MODES, log_leaderboard
from core.data import cache_root
from core.files import write_atomic

CACHE = cache_root() / "paired-differences.json"


def entries(cells: Iterable[RecordCell]) -> list[plots.Entry]:
    """The (labelled) cells as the plots see them: one point per table row, the mean over its
    seeds, with the intervals as error bars."""
    out = []
    for group in group_cells(cells):
        c, estimates = group.first, group.estimates
        out.append(plots.Entry(series=c.label, domain=c.domain, sparsity=c.sparsity, pattern=c.pattern,
                               metrics={m: e.value for m, e in estimates.items()}, reference=c.reference,
                               variant=c.variant,
                               intervals={m: e.interval for m, e in estimates.items() if e.interval}))
    return out


def allocations(cells: Iterable[RecordCell]) -> list[plots.LayerAllocation]:
    """The distinct OWL allocations among the cells (records before OWL have none)."""
    found: dict[tuple, plots.LayerAllocation] = {}
    for c in cells:
        block = c.record.get("allocation") or {}
        if block.get("kind") != "owl":
            continue
        label = f"{c.sparsity:g} · calib={c.calib}" + (f" · seed {c.seed}" if c.seed else "")
        found.setdefault((c.sparsity, c.calib, c.seed), plots.LayerAllocation(
            label, tuple(block["outlier_ratios"]), tuple(block["sparsities"])))
    return [found[k] for k in sorted(found, key=repr)]


def domain_plots(suite: Suite, out: Path) -> list[Path]:
    """(a) and (b) for one suite; the ablation variants get a trade-off figure of their own,
    so that they neither crowd the methods' figure nor go unseen; (d) where OWL cells exist."""
    items = entries(suite.cells)
    methods, ablations = plots.split_series(items)
    base, domain, title = out / suite.slug, suite.domain, suite.title
    made = [plots.ppl_vs_sparsity(items, domain, title, Path(f"{base}-ppl_vs_sparsity.png")),
            plots.general_vs_domain(methods, domain, title, Path(f"{base}-general_vs_domain.png")),
            plots.layer_sparsity(allocations(suite.cells), title, Path(f"{base}-owl_layer_sparsity.png"))]
    if ablations:
        made.append(plots.general_vs_domain(ablations, domain, f"{title} · ablations",
                                            Path(f"{base}-ablations_general_vs_domain.png")))
    return [p for p in made if p is not None]


def _masks(cells: Sequence[RecordCell]) -> tuple[dict[tuple, list[tuple[RecordCell, Path]]], int]:
    """The pruned cells with a mask file, by model, eval preset, sparsity and pattern; and how
    many name a mask file that is absent (e.g. records copied without masks)."""
    groups: dict[tuple, list[tuple[RecordCell, Path]]] = defaultdict(list)
    absent = 0
    for c in cells:
        name = c.record.get("masks")
        if c.reference or not name:
            continue
        if not (c.path.parent / name).exists():
            absent += 1
            continue
        groups[(c.model, c.eval, c.sparsity, c.pattern)].append((c, c.path.parent / name))
    return groups, absent


def similarity_plots(cells: Sequence[RecordCell], out: Path) -> list[Path]:
    """(c) one heatmap per model, eval preset, sparsity and pattern, over methods and domains (and
    seeds, each its own mask); cells whose mask file is absent are left out."""
    groups, absent = _masks(cells)
    if absent:
        print(f"note: {absent} record(s) name a mask file that is not there; "
              "left out of the similarity plots", file=sys.stderr)
    made = []
    for (model, eval_name, sparsity, pattern), group in sorted(groups.items()):
        group.sort(key=lambda item: (item[0].domain, method_rank(item[0].method), item[0].label,
                                     item[0].seed or 0))
        rows = Counter((c.label, c.domain) for c, _ in group)
        labels = [f"{c.label} / {c.domain}" + (f" · seed {c.seed}" if rows[(c.label, c.domain)] > 1 else "")
                  for c, _ in group]
        name = slug(f"masks-{model}-{eval_name}-s{sparsity:g}-{pattern}")
        title = f"{model} · eval={eval_name} · sparsity {sparsity:g} · {pattern}"
        path = plots.mask_similarity(labels, [p for _, p in group], title, out / f"{name}.png")
        if path is not None:
            made.append(path)
    return made


def write(cells: Sequence[RecordCell], out: Path, header: str, vs_dense: bool = False,
          compare: Comparisons | None = None) -> tuple[dict[str, str], list[Path]]:
    """Write every file; returns ({domain: CSV text}, all plot paths)."""
    cells = label_cells(cells)
    shared = similarity_plots(cells, out)
    tables, images = {}, list(shared)
    for domain, suites in build(cells, vs_dense, compare).items():
        own = [p for s in suites for p in domain_plots(s, out)]
        images += own
        tables[domain] = csv_text(suites)
        write_atomic(out / f"{domain}.md", markdown(domain, suites, header, own + shared))
        write_atomic(out / f"{domain}.csv", tables[domain])
        write_atomic(out / f"{domain}.html", html_page(domain, suites, header, own + shared))
    return tables, images


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (1: no usable records, 2: no results folder or
    an --out that is not a folder)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", default="results/runs", help="folder of cell records")
    parser.add_argument("--out", default="results/leaderboard", help="where tables and plots go")
    parser.add_argument("--vs-dense", action="store_true",
                        help="add per block each pruned row's difference to dense with its paired interval "
                             "(one bootstrap per row and metric: slower)")
    parser.add_argument("--cache", default=str(CACHE),
                        help="file of paired differences already bootstrapped, reused by content")
    parser.add_argument("--no-cache", action="store_true", help="bootstrap every paired difference anew")
    parser.add_argument("--budget", action="store_true",
                        help="also write the budget views: quality against calibration tokens, prune "
                             "seconds and memory, equal-budget tables, retention (docs/budget.md)")
    parser.add_argument("--mask-update", action="store_true",
                        help="also write the mask x update view: each mask with and without an update "
                             "of its kept weights, SparseGPT beside them, the gap to dense (docs/results.md)")
    parser.add_argument("--wandb", action="store_true", help="also log tables and plots to W&B")
    parser.add_argument("--wandb-mode", default="auto", choices=MODES,
                        help="auto: online with credentials, offline otherwise")
    parser.add_argument("--wandb-dir", default="results/wandb")
    parser.add_argument("--project", default="dpruner-bench")
    parser.add_argument("--group", default="leaderboard", help="W&B group of the leaderboard run")
    args = parser.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    if not results.is_dir():
        print(f"error: no results folder {results}; run a grid first (python run.py -m ...)", file=sys.stderr)
        return 2
    cells, skipped = read_cells(results)
    for line in skipped:
        print(line, file=sys.stderr)
    if not cells:
        named = f" ({len(skipped)} skipped, named above)" if skipped else ""
        print(f"error: no usable records in {results}{named}", file=sys.stderr)
        return 1
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = "it is a file" if out.is_file() else err.strerror or str(err)
        print(f"error: --out {out} cannot hold the tables and plots ({why}); give a folder", file=sys.stderr)
        return 2
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "-m", "bench.leaderboard", *argv])
    header = f"Generated by `{command}` on {when} from {len(cells)} cell record(s) in `{results}`."
    compare = Comparisons(None if args.no_cache else Path(args.cache).expanduser())
    tables, images = write(cells, out, header, args.vs_dense, compare)
    if args.budget:  # imported here: an older record's budget is derived by its method, with torch
        from bench.leaderboard.budget_pages import write_budget
        budget_files = write_budget(cells, out, header, compare)
        images += [p for p in budget_files if p.suffix == ".png"]
        print(f"budget: {len(budget_files)} file(s) -> {out}/")
    if args.mask_update:
        mask_update_files = write_mask_update(cells, out, header, compare)
        print(f"mask x update: {len(mask_update_files)} file(s) -> {out}/" if mask_update_files else
              "mask x update: no panel has a mask both with and without an update; nothing written")
    compare.save()
    also = f" ({len(skipped)} record(s) skipped)" if skipped else ""
    print(f"leaderboard: {len(cells)} cells{also}, {len(tables)} domain(s) -> {out}/"
          f" ({', '.join(sorted(tables))}; {len(images)} plots)")
    if args.wandb:
        log_leaderboard(tables, images, args.wandb_mode, Path(args.wandb_dir), args.project, args.group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
