"""One prune on 1 and on N processes (torchrun, gloo on CPU / NCCL on CUDA): wall time, D-Pruner's
stages, the weights each rank holds after loading and peak RSS of every rank, and how many mask
entries each prune shares with the first one (the same global batches). Each run is its own
torchrun, so every rank's peak RSS is its own high-water mark. With `--shard-rows` every N > 1
runs twice: each rank loading the whole model, and each loading only its rows (model.shard_rows).

    python -m bench.perf.distributed                        # default model, D-Pruner, 1 and 2 processes
    python -m bench.perf.distributed --processes 2 --shard-rows   # 2 processes, whole vs rank-local
    python -m bench.perf.distributed --model smollm2-135m --processes 1 2 --out /tmp/dist.md
    python -m bench.perf.distributed --method sparsegpt pruner.cache_dir=null
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.perf.worker import bench_parser, print_result
from core.files import write_atomic
from core.paths import PROJECT_ROOT, project_path

MODULE = "bench.perf.distributed"


def measure(method: str, model_name: str, domain: str, masks_out: str, overrides: list[str]) -> dict | None:
    """This rank's load, calibrate and prune; rank 0 returns every rank's figures (None elsewhere)."""
    import torch
    import torch.distributed as dist

    from bench.perf.cell import bench_cell
    from core import distributed
    from core.memory import peak_memory_mb
    from core.models import load_model, resolve_device
    from core.structure import model_linears

    world = distributed.world_from_env()
    cfg, cell = bench_cell([f"pruner={method}", f"model={model_name}", f"domain={domain}",
                            "driver.progress=false", *overrides], world)
    device = resolve_device(cfg.model.device)
    backend = distributed.start(world, device)
    runtime = peak_memory_mb()
    model, tokenizer = load_model(cfg.model)
    held_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    pruner = cell.pruner
    windows = cell.calibration(tokenizer)
    start = time.perf_counter()
    pruner.prune(model, windows, device)
    mine = {"rank": world.rank, "seconds": time.perf_counter() - start, "stages": pruner.stages,
            "peak_rss_mb": peak_memory_mb(), "runtime_rss_mb": runtime, "held_mb": held_mb}
    ranks = [mine]
    if world.distributed:
        ranks = [None] * world.size
        dist.all_gather_object(ranks, mine)
    distributed.stop()
    if not world.leader:
        return None
    torch.save({name: linear.weight != 0 for name, linear in model_linears(model).items()}, masks_out)
    fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    return {"processes": world.size, "backend": backend, "ranks": ranks, "model_fp32_mb": fp32_mb,
            "threads": torch.get_num_threads(), "shard_rows": bool(cfg.model.shard_rows)}


def launch(processes: int, args: argparse.Namespace, masks_out: Path, rows: bool) -> dict[str, Any]:
    """One torchrun of `processes` workers; rank 0's JSON line is the last of its stdout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={port}", "-m", MODULE, "--worker", "--method", args.method, "--model",
               args.model, "--domain", args.domain, "--masks", str(masks_out), *args.overrides,
               *(["model.shard_rows=true"] if rows else [])]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{processes} processes failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return {**json.loads(lines[-1]), "wall_seconds": time.perf_counter() - start}


def agreement(a: Path, b: Path) -> float:
    """Share of mask entries two prunes agree on."""
    import torch

    first, second = torch.load(a), torch.load(b)
    same = sum(int((first[n] == second[n]).sum()) for n in first)
    return same / sum(t.numel() for t in first.values())


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base = results[0]
    lines = [f"# {args.method} on 1 and more processes ({args.model}, domain {args.domain})", "",
             f"Command: `python -m {MODULE} --method {args.method} --model {args.model} --domain "
             f"{args.domain} {' '.join(args.overrides)}`; {platform.processor() or platform.machine()}, "
             f"{base['threads']} torch threads per rank. fp32 model {base['model_fp32_mb']:.0f} MiB.", "",
             "| processes | weights per rank | backend | prune (s), rank 0 | stages, rank 0 "
             "| loaded weights per rank (MiB) | peak RSS per rank (MiB) | runtime RSS (MiB) "
             "| launch to exit (s) | masks equal to the first row |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rank0 = r["ranks"][0]
        stages = ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in rank0["stages"].items()) or "-"
        rss = " / ".join(f"{x['peak_rss_mb']:.0f}" for x in r["ranks"])
        held = " / ".join(f"{x['held_mb']:.0f}" for x in r["ranks"])
        lines.append(f"| {r['processes']} | {'own rows' if r['shard_rows'] else 'whole'} "
                     f"| {r['backend'] or '-'} | {rank0['seconds']:.1f} | {stages} | {held} "
                     f"| {rss} | {rank0['runtime_rss_mb']:.0f} | {r['wall_seconds']:.0f} "
                     f"| {r['agreement']:.5%} |")
    lines += ["", "Peak RSS is each rank's own high-water mark (interpreter, torch, tokenizer, the "
              "loaded model -- whole, or its rows of the pruned matrices with model.shard_rows -- "
              "which is also D-Pruner's dense copy, its shards, and on rank 0 the whole pruned model "
              "gathered for evaluation). Each rank runs the torch threads shown (OMP_NUM_THREADS), "
              "so N processes use N times the cores of one; on a machine shared with other work "
              "the times are indicative only."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(MODULE, __doc__)
    parser.add_argument("--method", default="dpruner")
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--shard-rows", action="store_true",
                        help="run every N > 1 also with each rank loading only its rows")
    parser.add_argument("--out", default="results/bench/distributed.md", help="relative to the project root")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--masks", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. pruner.cache_dir=null")
    args = parser.parse_args(argv)
    if args.worker:
        result = measure(args.method, args.model, args.domain, args.masks, args.overrides)
        if result is not None:
            print_result(result)
        return
    results = []
    runs = [(n, rows) for n in args.processes for rows in (False, True)
            if not rows or (args.shard_rows and n > 1)]
    with tempfile.TemporaryDirectory() as scratch:
        for n, rows in runs:
            masks = Path(scratch) / f"masks_{n}_{rows}.pt"
            result = launch(n, args, masks, rows)
            result["agreement"] = agreement(Path(scratch) / f"masks_{runs[0][0]}_{runs[0][1]}.pt", masks)
            results.append(result)
            rss = [round(r["peak_rss_mb"]) for r in result["ranks"]]
            label = f"{n} processes{' (own rows)' if rows else ''}"
            print(f"{label}: prune {result['ranks'][0]['seconds']:.1f}s, peak RSS per rank {rss} MiB, "
                  f"masks equal {result['agreement']:.5%}")
    out = write_atomic(project_path(args.out), table(results, args))
    write_atomic(Path(out).with_suffix(".json"), json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
