"""Prune time and peak memory per method, beside the time of one plain forward pass over the
same calibration set, measured in the same run.

    python -m bench.perf.speed [--model smollm2-135m] [--nsamples 32] [--seqlen 512] [--batch-size 8]
                               [--methods magnitude,wanda,ria,sparsegpt,wanda+dsnot]
                               [--out results/bench/speed.md]

Each measurement runs in its own process so that its peak RSS is its own. Every cell is the
default config (conf/) at sparsity 0.5 with the sizes above as `calib.*` and `driver.batch_size`.
A layer-by-layer method needs at least two forward passes' worth of work (statistics, then the
pruned re-run), so the table reports time / (2 x forward). `<method>+dsnot` adds DSnoT's refinement
(its own layer-by-layer pass, whose seconds are shown apart), `<method>+obs` the OBS update."""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

from bench.perf.worker import bench_parser, print_result, run_worker
from core.files import write_atomic
from core.paths import project_path

MODULE = "bench.perf.speed"


def measure(kind: str, model_name: str, nsamples: int, seqlen: int, batch_size: int) -> dict[str, Any]:
    """Run inside a worker process: load, calibrate, then time `kind` (a method or 'forward')."""
    import torch

    from bench.perf.cell import bench_cell, pruner_overrides
    from core.memory import peak_memory_mb
    from core.models import load_model, resolve_device

    # forward: over the `calib` group's windows, as a calibrated baseline (Wanda's cell) reads them
    method = pruner_overrides("wanda" if kind == "forward" else kind)
    cfg, cell = bench_cell([*method, f"model={model_name}", "sparsity=0.5", f"calib.nsamples={nsamples}",
                            f"calib.seqlen={seqlen}", f"driver.batch_size={batch_size}",
                            "driver.progress=false"])
    model, tokenizer = load_model(cfg.model)
    device = resolve_device(cfg.model.device)
    windows = cell.calibration(tokenizer)
    if kind == "forward":
        ids = windows.ids

        def work() -> None:
            with torch.no_grad():
                for i in range(0, nsamples, batch_size):
                    model(input_ids=ids[i : i + batch_size].to(device))
    else:

        def work() -> None:
            cell.pruner.prune(model, windows, device)
    loaded_mb = peak_memory_mb()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    stages = {} if kind == "forward" else cell.pruner.stages
    follow_s = sum(stages.get(stage, {}).get("seconds", 0.0) for stage in ("refine", "reconstruct"))
    return {"kind": kind, "seconds": seconds, "follow_up_s": follow_s, "peak_rss_mb": peak_memory_mb(device),
            "loaded_mb": loaded_mb}


def table(rows: list[dict[str, Any]], forward_s: float) -> str:
    """Markdown rows: each measurement and its time relative to two forward passes."""
    lines = ["| method | prune time (s) | x (2 x forward) | of which refine/update (s) | peak RSS (MiB) "
             "| RSS after load (MiB) |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = row["seconds"] / (2 * forward_s)
        follow = f"{row['follow_up_s']:.1f}" if row.get("follow_up_s") else ""
        lines.append(f"| {row['kind']} | {row['seconds']:.1f} | {ratio:.2f} | {follow} "
                     f"| {row['peak_rss_mb']:.0f} | {row['loaded_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    """The forward pass, then each method, one worker process each; or, with --worker, one of them."""
    parser = bench_parser(MODULE, __doc__, domain=False)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", default="magnitude,wanda,ria,sparsegpt,wanda+dsnot")
    parser.add_argument("--out", default="results/bench/speed.md", help="relative to the project root")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print_result(measure(args.worker, args.model, args.nsamples, args.seqlen, args.batch_size))
        return
    sizes = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
             "--batch-size", str(args.batch_size)]
    forward = run_worker(MODULE, ["forward", *sizes])
    rows = [forward] + [run_worker(MODULE, [kind, *sizes]) for kind in args.methods.split(",")]
    header = (f"# Prune speed\n\n`python -m {MODULE} --model {args.model} --nsamples {args.nsamples} "
              f"--seqlen {args.seqlen} --batch-size {args.batch_size} --methods {args.methods}`  \n"
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} CPU x{_cores()}, "
              f"one forward pass = {forward['seconds']:.1f} s\n\n")
    text = header + table(rows, forward["seconds"]) + "\n"
    write_atomic(project_path(args.out), text)
    print(text)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
