"""The evidence for D-Pruner's regulariser default: a sweep over lambda (paper and anchored forms)
on real data, reporting how large the regulariser term is next to the gradient and what the
pruned model's domain and general perplexities are. One process, the model loaded once and
restored between cells; G is computed once (the pruner's cache). Rerunning the same command
after a kill resumes: the cells already in the output file are kept and skipped.

    python -m bench.perf.dpruner_lambda --domain legal   # writes results/bench/dpruner_lambda_legal.md
    python -m bench.perf.dpruner_lambda --model tiny-llama --cells dense paper_0.1 --out /tmp/l.md eval=smoke
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.perf.worker import bench_parser
from core.files import write_atomic
from core.paths import project_path

MODULE = "bench.perf.dpruner_lambda"
FIXED: dict[str, dict[str, Any] | None] = {
    "dense": None,
    "general_only": {"importance": "general_only"},
    "domain_only": {"importance": "domain_only"},
    "domain_only_frozen": {"importance": "domain_only", "update_weights": False},
}
DEFAULT_CELLS = ["dense", "general_only", "domain_only", "paper_0.1", "paper_1e6", "paper_1e9", "paper_1e12",
                 "anchor_1", "anchor_10", "anchor_100"]


def cell_options(label: str) -> dict[str, Any] | None:
    """A name of FIXED, `paper_<lambda>` or `anchor_<lambda>` -> pruner
    overrides (None: the dense model)."""
    if label in FIXED:
        return FIXED[label]
    form, _, value = label.partition("_")
    if form not in ("paper", "anchor"):
        raise SystemExit(f"unknown cell {label!r}; use {sorted(FIXED)}, paper_<lambda> or anchor_<lambda>")
    return {"regularizer": form, "lambda_": float(value)}


def intro(cfg: Any, model_name: str, domain: str, overrides: list[str]) -> list[str]:
    """The report's title and the settings every cell shares."""
    size = cfg.pruner.domain_calib
    return [
        f"# D-Pruner lambda sweep ({model_name}, domain {domain}, sparsity {cfg.sparsity})", "",
        f"Command: `python -m {MODULE} --model {model_name} --domain {domain} "
        f"{' '.join(overrides)}`. Pruner defaults from conf/pruner/dpruner.yaml; general calibration "
        f"{cfg.calib.nsamples}x{cfg.calib.seqlen}, domain {size.nsamples}x{size.seqlen}; eval preset "
        f"{cfg.eval.name} (perplexity only: window {cfg.eval.perplexity.window}, "
        f"{cfg.eval.perplexity.max_windows} windows per text). reg/grad = mean over matrices of "
        "mean |regulariser gradient| / mean |g| (median, max).", "",
    ]


def run(model_name: str, domain: str, cells: list[str], out: Path, overrides: list[str]) -> None:
    """Prune and measure each cell not yet in `out`, rewriting `out` after each one."""
    from bench.perf.cell import bench_cell
    from core.data import load_texts
    from core.models import load_model, resolve_device
    from evals.perplexity import perplexity_sources, strided_perplexity

    shared = [f"model={model_name}", f"domain={domain}", "pruner=dpruner", "driver.progress=false",
              *overrides]
    cfg, base = bench_cell(shared)
    # every cell validated before the model loads; the windows are those any cell reads
    built = {label: bench_cell([*shared, *(f"pruner.{k}={json.dumps(v)}" for k, v in options.items())])[1]
             for label in cells if (options := cell_options(label)) is not None}
    pruners = {label: cell.pruner for label, cell in built.items()}
    requests = {slot: r for cell in built.values() for slot, r in cell.requests.items()}
    root = base.data_root
    model, tokenizer = load_model(cfg.model)
    device = resolve_device(cfg.model.device)
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    windows = replace(base, requests=requests).calibration(tokenizer)
    specs = perplexity_sources(cfg.domain, cfg.data.general)
    sources = {key: load_texts(spec, root) for key, spec in specs.items()}
    settings = cfg.eval.perplexity
    window, stride, limit, batch = settings.window, settings.stride, settings.max_windows, settings.batch_size
    lines, header = intro(cfg, model_name, domain, overrides), list(specs)
    table = ["| cell | reg/grad mean | median | max | " + " | ".join(f"{k} ppl" for k in header)
             + " | prune s |", "|---" * (len(header) + 5) + "|"]
    previous = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    if previous[: len(lines) + 2] == lines + table:  # the same sweep was interrupted: resume it
        lines = previous
    else:
        lines += table
    done = {line.split("|")[1].strip() for line in lines if line.startswith("| ") and line != table[0]}
    for label in (c for c in cells if c not in done):
        model.load_state_dict(dense)
        start = time.perf_counter()
        ratios: list[float] = []
        if label in pruners:
            ratios = [r.notes.get("reg_ratio", 0.0) for r in pruners[label].prune(model, windows, device)]
        prune_seconds = time.perf_counter() - start
        ppl = {key: strided_perplexity(model, tokenizer, texts, window, stride, limit, batch,
                                       progress=False).ppl for key, texts in sources.items()}
        stats = ["-"] * 3 if not ratios else [f"{statistics.fmean(ratios):.3g}",
                                               f"{statistics.median(ratios):.3g}", f"{max(ratios):.3g}"]
        lines.append(f"| {label} | " + " | ".join(stats) + " | "
                     + " | ".join(f"{ppl[k]:.2f}" for k in header) + f" | {prune_seconds:.0f} |")
        write_atomic(out, "\n".join(lines) + "\n")  # partial results survive a kill
        print(lines[-1], flush=True)


def main(argv: list[str] | None = None) -> None:
    """Check the cell names, then run the sweep (resuming an interrupted one)."""
    parser = bench_parser(MODULE, __doc__)
    parser.add_argument("--cells", nargs="+", default=DEFAULT_CELLS,
                        help=f"{', '.join(FIXED)}, paper_<lambda>, anchor_<lambda>")
    parser.add_argument("--out", default=None, help="relative to the project root "
                        "(default: results/bench/dpruner_lambda_<domain>.md)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sparsity=0.6 eval=smoke")
    args = parser.parse_args(argv)
    out = project_path(args.out or f"results/bench/dpruner_lambda_{args.domain}.md")
    for label in args.cells:
        cell_options(label)  # fail before any model loads
    run(args.model, args.domain, args.cells, out, args.overrides)


if __name__ == "__main__":
    main()
