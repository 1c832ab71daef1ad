"""Prune time and peak memory per method, beside the time of one plain forward pass over the
same calibration set, measured in the same run.

    python -m bench.speed [--model smollm2-135m] [--nsamples 32] [--seqlen 512]
                          [--methods magnitude,wanda,sparsegpt] [--out results/bench/speed.md]

Each measurement runs in its own process so that its peak RSS is its own. A layer-by-layer
method needs at least two forward passes' worth of work (statistics, then the pruned re-run),
so the table reports time / (2 x forward)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def measure(kind: str, model_name: str, nsamples: int, seqlen: int, batch_size: int, seed: int) -> dict:
    """Run inside a worker process: load, calibrate, then time `kind` (a method or 'forward')."""
    import torch
    from omegaconf import OmegaConf

    from core.data import general_calibration, resolve_data_root
    from core.models import load_model, resolve_device
    from pruners import Calibration, build
    from pruners.base import peak_memory_mb

    cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / f"{model_name}.yaml")
    general = OmegaConf.load(PROJECT_ROOT / "conf" / "config.yaml").data.general.calib
    model, tokenizer = load_model(cfg)
    device = resolve_device(cfg.device)
    ids = general_calibration(tokenizer, general, resolve_data_root(None), nsamples, seqlen, seed)
    loaded_mb = peak_memory_mb()
    start = time.perf_counter()
    if kind == "forward":
        with torch.no_grad():
            for i in range(0, nsamples, batch_size):
                model(input_ids=ids[i : i + batch_size].to(device))
    else:
        pruner = build(kind, sparsity=0.5, driver={"batch_size": batch_size, "progress": True})
        pruner.prune(model, Calibration(ids=ids, general=ids, domain=ids), device)
    seconds = time.perf_counter() - start
    return {"kind": kind, "seconds": seconds, "peak_rss_mb": peak_memory_mb(device), "loaded_mb": loaded_mb}


def run_worker(kind: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.speed", "--worker", kind, "--model", args.model,
               "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
               "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], forward_s: float) -> str:
    lines = ["| method | prune time (s) | x (2 x forward) | peak RSS (MiB) | RSS after load (MiB) |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        ratio = row["seconds"] / (2 * forward_s)
        lines.append(f"| {row['kind']} | {row['seconds']:.1f} | {ratio:.2f} | {row['peak_rss_mb']:.0f} "
                     f"| {row['loaded_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--out", default="results/bench/speed.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.model, args.nsamples, args.seqlen, args.batch_size, 0)))
        return
    forward = run_worker("forward", args)
    rows = [forward] + [run_worker(kind, args) for kind in args.methods.split(",")]
    header = (f"# Prune speed\n\n`python -m bench.speed --model {args.model} --nsamples {args.nsamples} "
              f"--seqlen {args.seqlen} --batch-size {args.batch_size} --methods {args.methods}`  \n"
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} CPU x{_cores()}, "
              f"one forward pass = {forward['seconds']:.1f} s\n\n")
    text = header + table(rows, forward["seconds"]) + "\n"
    out = PROJECT_ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
