"""Leaderboard tables and plots from every finished cell record.

    python -m bench.leaderboard [RESULTS_DIR] [--out results/leaderboard] [--wandb]

Per domain: `<domain>.md`, `<domain>.csv` and a self-contained `<domain>.html` (plots inlined),
methods x metrics in one block per sparsity/pattern (and calibration, where not general), the
dense model as the reference row of every block and the best pruned method per column marked.
A cell that was not run, or a metric it did not measure, is an empty cell, never a zero.
Unreadable records are named on stderr and skipped; the rest is still built."""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
import re
import shlex
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import plots
from bench.records import NOT_IN_KEY, BrokenRecord, iter_records
from bench.tracking import MODES, resolve_mode

METHOD_ORDER = ("dense", "magnitude", "wanda", "sparsegpt", "dpruner")
LOWER_BETTER = {"ppl", "bpb", "nll", "loss"}
HIGHER_BETTER = {"acc", "f1", "exact", "em", "accuracy"}
COST = "prune_s"  # shown beside the metrics, never ranked
IGNORED = tuple(".".join(path) for path in NOT_IN_KEY)


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


def to_cell(path: Path, record: dict[str, Any]) -> Cell:
    cell = record["cell"]
    return Cell(path=path, record=record, model=str(cell["model"]), eval=str(cell["eval"]),
                domain=str(cell["domain"]), method=str(cell["pruner"]), sparsity=float(cell["sparsity"]),
                pattern=str(cell["pattern"]), calib=str(cell.get("calib") or "general"))


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
            labelled.append(replace(c, label=label))
    return labelled


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def metric_rank(metric: str, domain: str) -> tuple:
    """The domain's columns before the general ones; perplexity before task scores."""
    scope, task, name = (metric.split("/", 2) + ["", ""])[:3]
    preferred = ("ppl", "bpb", "acc", "macro_f1", "f1", "rouge1", "rouge2", "rougeL", "rougeLsum")
    position = preferred.index(name) if name in preferred else len(preferred)
    return (scope != domain, scope, name not in ("ppl", "bpb"), task, position, name)


def setting_rank(setting: tuple[float, str, str]) -> tuple:
    sparsity, pattern, calib = setting
    return (calib != "general", calib, pattern != "unstructured", pattern, sparsity)


@dataclass
class Row:
    label: str
    values: dict[str, float | None]
    reference: bool = False


@dataclass
class Block:
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
                     if not r.reference and _finite(r.values.get(column))]
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


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def build_suite(cells: list[Cell], domain: str) -> Suite:
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


def read_cells(results_dir: Path) -> list[Cell]:
    """Every finished record as a Cell; broken or malformed ones are reported and skipped."""
    cells = []
    for path, record in iter_records(results_dir):
        if isinstance(record, BrokenRecord):
            print(f"skipped: {record}", file=sys.stderr)
            continue
        try:
            cells.append(to_cell(path, record))
        except (KeyError, TypeError, ValueError) as err:
            print(f"skipped: {path}: record without the expected cell fields ({err!r})", file=sys.stderr)
    return cells


# ---------------------------------------------------------------------------------- rendering

def header_name(metric: str) -> str:
    if metric == COST:
        return "prune s"
    arrow = {-1: " ↓", 1: " ↑"}.get(direction(metric), "")
    return " ".join(metric.split("/")[1:]) + arrow


def fmt(column: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, int | float):
        return str(value)
    if column == COST:
        return f"{value:.1f}"
    return f"{value:.2f}" if column.endswith("/ppl") else f"{value:.3f}"


LEGEND = ("↓ lower is better, ↑ higher is better. Bold: the best pruned method in the column (ties all "
          "bold); dense is the unpruned reference. An empty cell was not run or not measured. "
          "`prune s`: pruning wall time in seconds.")


def markdown(domain: str, suites: Sequence[Suite], header: str, images: Sequence[Path]) -> str:
    lines = [f"# Leaderboard: {domain}", "", header, "", LEGEND, ""]
    for suite in suites:
        lines += [f"## {suite.title}", ""]
        for block in suite.blocks:
            lines += [f"### {block.title}", "",
                      "| method | " + " | ".join(header_name(c) for c in block.columns) + " |",
                      "|---|" + "---:|" * len(block.columns)]
            for row in block.rows:
                cells = []
                for column in block.columns:
                    text = fmt(column, row.values.get(column))
                    cells.append(f"**{text}**" if row.label in block.best.get(column, ()) else text)
                lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(suites: Sequence[Suite]) -> str:
    """One row per cell (dense once), every metric of the domain; empty where not measured."""
    columns = list(dict.fromkeys(c for s in suites for b in s.blocks for c in b.columns))
    if not columns:
        columns = [COST]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "eval", "method", "label", "sparsity", "pattern", "calib", "key", *columns])
    for suite in suites:
        order = sorted(suite.cells, key=lambda c: (not c.reference, setting_rank(c.setting or (0.0, "", "")),
                                                   method_rank(c.method), c.label))
        for c in order:
            values = c.values()
            writer.writerow([c.model, c.eval, c.method, c.label, c.sparsity, c.pattern,
                             c.record["cell"].get("calib") or "", c.record["key"],
                             *("" if values.get(col) is None else values[col] for col in columns)])
    return buffer.getvalue()


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
tr.reference{color:#666;font-style:italic}strong{color:#0a5}img{max-width:100%;margin:1em 0}
.note{color:#555;font-size:0.9em}"""


def html_page(domain: str, suites: Sequence[Suite], header: str, images: Sequence[Path]) -> str:
    """A single file: styles inline, plots as data URIs."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Leaderboard: {e(domain)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>Leaderboard: {e(domain)}</h1>",
             f"<p class='note'>{e(header.replace('`', ''))}</p>",
             f"<p class='note'>{e(LEGEND.replace('`', ''))}</p>"]
    for suite in suites:
        parts.append(f"<h2>{e(suite.title)}</h2>")
        for block in suite.blocks:
            parts.append(f"<h3>{e(block.title)}</h3><table><tr><th>method</th>"
                         + "".join(f"<th>{e(header_name(c))}</th>" for c in block.columns) + "</tr>")
            for row in block.rows:
                cells = []
                for column in block.columns:
                    text = e(fmt(column, row.values.get(column)))
                    best = row.label in block.best.get(column, ())
                    cells.append(f"<td><strong>{text}</strong></td>" if best else f"<td>{text}</td>")
                css = " class='reference'" if row.reference else ""
                parts.append(f"<tr{css}><td>{e(row.label)}</td>{''.join(cells)}</tr>")
            parts.append("</table>")
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        parts.append(f"<img alt='{e(image.stem)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -------------------------------------------------------------------------------------- plots

def entries(cells: Iterable[Cell]) -> list[plots.Entry]:
    out = []
    for c in cells:
        masks = c.record.get("masks")
        out.append(plots.Entry(series=c.label, domain=c.domain, sparsity=c.sparsity, pattern=c.pattern,
                               metrics=c.record["metrics"], reference=c.reference,
                               masks=c.path.parent / masks if masks else None))
    return out


def domain_plots(suite: Suite, out: Path) -> list[Path]:
    items = entries(suite.cells)
    base = out / suite.slug
    made = [plots.ppl_vs_sparsity(items, suite.domain, suite.title, Path(f"{base}-ppl_vs_sparsity.png")),
            plots.general_vs_domain(items, suite.domain, suite.title, Path(f"{base}-general_vs_domain.png"))]
    return [p for p in made if p is not None]


def similarity_plots(cells: Sequence[Cell], out: Path) -> list[Path]:
    """(c) one heatmap per model, eval preset, sparsity and pattern, over methods and domains;
    cells whose mask file is absent (e.g. records copied without masks) are left out."""
    groups: dict[tuple, list[plots.Entry]] = defaultdict(list)
    absent = 0
    for c, entry in zip(cells, entries(cells), strict=True):
        if entry.reference or entry.masks is None:
            continue
        if not entry.masks.exists():
            absent += 1
            continue
        groups[(c.model, c.eval, c.sparsity, c.pattern)].append(entry)
    if absent:
        print(f"note: {absent} record(s) name a mask file that is not there; "
              "left out of the similarity plots", file=sys.stderr)
    made = []
    for (model, eval_name, sparsity, pattern), group in sorted(groups.items()):
        group.sort(key=lambda e: (e.domain, method_rank(e.series.split(" ")[0]), e.series))
        name = slug(f"masks-{model}-{eval_name}-s{sparsity:g}-{pattern}")
        title = f"{model} · eval={eval_name} · sparsity {sparsity:g} · {pattern}"
        path = plots.mask_similarity([f"{e.series} / {e.domain}" for e in group], [e.masks for e in group],
                                     title, out / f"{name}.png")
        if path is not None:
            made.append(path)
    return made


# ---------------------------------------------------------------------------------------- W&B

def log_to_wandb(tables: dict[str, str], images: Sequence[Path], mode: str, folder: Path,
                 project: str, group: str | None) -> None:
    """The CSV tables as wandb.Table and the plots as images, in one run; a failure is a warning."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return
    try:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, group=group, job_type="leaderboard", name="leaderboard", mode=mode,
                         dir=str(folder), reinit="finish_previous", settings=wandb.Settings(silent=True))
        for domain, text in tables.items():
            header, *rows = list(csv.reader(io.StringIO(text)))
            data = [[_number(v) for v in row] for row in rows]
            run.log({f"leaderboard/{domain}": wandb.Table(columns=header, data=data)})
        run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in images})
        print(f"W&B ({mode}): {run.dir}")
        run.finish()
    except Exception as err:  # noqa: BLE001 - the files are written; logging is best effort
        print(f"warning: W&B logging failed ({type(err).__name__}: {err}); the files are written",
              file=sys.stderr)


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------------------- main

def write(cells: Sequence[Cell], out: Path, header: str) -> tuple[dict[str, str], list[Path]]:
    """Write every file; returns ({domain: CSV text}, all plot paths)."""
    out.mkdir(parents=True, exist_ok=True)
    cells = label_cells(cells)
    shared = similarity_plots(cells, out)
    tables, images = {}, list(shared)
    for domain, suites in build(cells).items():
        own = [p for s in suites for p in domain_plots(s, out)]
        images += own
        tables[domain] = csv_text(suites)
        (out / f"{domain}.md").write_text(markdown(domain, suites, header, own + shared), encoding="utf-8")
        (out / f"{domain}.csv").write_text(tables[domain], encoding="utf-8")
        (out / f"{domain}.html").write_text(html_page(domain, suites, header, own + shared), encoding="utf-8")
    return tables, images


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", default="results/runs", help="folder of cell records")
    parser.add_argument("--out", default="results/leaderboard", help="where tables and plots go")
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
    cells = read_cells(results)
    if not cells:
        print(f"error: no finished records in {results}", file=sys.stderr)
        return 1
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "-m", "bench.leaderboard", *argv])
    header = f"Generated by `{command}` on {when} from {len(cells)} cell record(s) in `{results}`."
    tables, images = write(cells, out, header)
    print(f"leaderboard: {len(cells)} cells, {len(tables)} domain(s) -> {out}/"
          f" ({', '.join(sorted(tables))}; {len(images)} plots)")
    if args.wandb:
        log_to_wandb(tables, images, args.wandb_mode, Path(args.wandb_dir), args.project, args.group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
