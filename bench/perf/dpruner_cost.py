"""Cost of D-Pruner against SparseGPT on one model: wall time (D-Pruner per stage) and peak
resident memory. Each method runs in its own process, since peak RSS is a per-process
high-water mark; both are cells of the project's config (conf/), so the calibration sizes are
the defaults a cell would use. D-Pruner runs without its G cache, so its general pass is timed.

    python -m bench.perf.dpruner_cost                 # default model, legal domain
    python -m bench.perf.dpruner_cost --model tiny-llama --out /tmp/cost.md
    python -m bench.perf.dpruner_cost --methods dpruner --out /tmp/disk.md pruner.scratch=disk
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

from bench.perf.worker import bench_parser, print_result, run_worker
from core.files import write_atomic
from core.paths import project_path

MODULE = "bench.perf.dpruner_cost"
METHODS = ("sparsegpt", "dpruner")


def measure(method: str, model_name: str, domain: str, overrides: list[str]) -> dict[str, Any]:
    """Load, calibrate and prune once in this process; returns times and memory."""
    import torch

    from bench.perf.cell import bench_cell, pruner_overrides
    from core.memory import peak_memory_mb
    from core.models import load_model, resolve_device

    cfg, cell = bench_cell([*pruner_overrides(method), f"model={model_name}", f"domain={domain}",
                            "driver.progress=false", *overrides])
    runtime = peak_memory_mb(torch.device("cpu"))  # interpreter, torch, Hydra: no model yet
    model, tokenizer = load_model(cfg.model)
    device = resolve_device(cfg.model.device)
    pruner, requests = cell.pruner, cell.requests
    windows = cell.calibration(tokenizer)
    with torch.no_grad():  # page in weights loaded lazily, so the baseline includes the model
        sum(float(p.sum()) for p in model.parameters())
    loaded = peak_memory_mb(device)
    start = time.perf_counter()
    pruner.prune(model, windows, device)
    seconds = time.perf_counter() - start
    fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    return {
        "method": method, "seconds": seconds, "stages": getattr(pruner, "stages", {}),
        "peak_rss_mb": peak_memory_mb(device), "loaded_rss_mb": loaded, "runtime_rss_mb": runtime,
        "model_fp32_mb": fp32_mb, "threads": torch.get_num_threads(), "device": str(device),
        "calibration": {slot: [request.source, *windows[slot].shape]
                        for slot, request in requests.items()},
    }


def table(results: list[dict[str, Any]], model_name: str, domain: str) -> str:
    """Markdown report of the measurements."""
    base = next((r for r in results if r["method"] == "sparsegpt"), results[0])
    lines = [
        f"# D-Pruner cost vs SparseGPT ({model_name}, domain {domain})", "",
        f"Command: `python -m {MODULE} --model {model_name} --domain {domain}`; "
        f"{platform.processor() or platform.machine()}, {base['threads']} torch threads, "
        f"device {base['device']}. fp32 model size {base['model_fp32_mb']:.0f} MiB.", "",
        "| method | calibration | prune time (s) | stages: time / peak RSS so far | x SparseGPT time "
        "| peak RSS (MiB) | peak RSS / fp32 model | (peak RSS - runtime) / fp32 model "
        "| RSS added by pruning (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        calib = ", ".join(f"{source} {n}x{seqlen}" for source, n, seqlen in r["calibration"].values()) or "-"
        stages = ", ".join(f"{k} {v['seconds']:.0f}s / {v['peak_mb']:.0f} MiB"
                           for k, v in r["stages"].items()) or "-"
        lines.append(
            f"| {r['method']} | {calib} | {r['seconds']:.1f} | {stages} "
            f"| {r['seconds'] / base['seconds']:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / r['model_fp32_mb']:.2f} "
            f"| {(r['peak_rss_mb'] - r['runtime_rss_mb']) / r['model_fp32_mb']:.2f} "
            f"| {r['peak_rss_mb'] - r['loaded_rss_mb']:.0f} |")
    runtime = max(r["runtime_rss_mb"] for r in results)
    lines += ["", "Peak RSS is the process's high-water mark (interpreter, torch, tokenizer and model "
              f"included); runtime is the RSS before the model loads ({runtime:.0f} MiB: Python, torch, "
              "Hydra; it does not grow with the model); the last column is what the prune step added "
              "above the loaded model."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Each method in a worker process of its own, one at a time; or, with --worker, one of them."""
    parser = bench_parser(MODULE, __doc__)
    parser.add_argument("--out", default="results/bench/dpruner_cost.md", help="relative to the project root")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. pruner.batch_size=8")
    args = parser.parse_args(argv)
    if args.worker:
        print_result(measure(args.worker, args.model, args.domain, args.overrides))
        return
    results = []
    for method in args.methods:  # one process each, one at a time
        results.append(run_worker(MODULE, [method, "--model", args.model, "--domain", args.domain,
                                           *args.overrides]))
        print(f"{method}: {results[-1]['seconds']:.1f}s, peak RSS {results[-1]['peak_rss_mb']:.0f} MiB")
    out = write_atomic(project_path(args.out), table(results, args.model, args.domain))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
