"""D-Pruner's domain pass against its floor, one plain training step over the same tokens:
forward + backward + a plain SGD update of the same matrices, with the same model settings
(activation checkpointing, the chunked output-layer loss, the batch size). Both run in one
process on the cell's own domain windows, in rounds that alternate which goes first; a second
part runs the domain pass alone, in a fresh process per window count, and reports its peak RSS,
which must not grow with the number of windows.

    python -m bench.perf.domain_pass                  # default model and domain
    python -m bench.perf.domain_pass --windows 16 --memory-windows 8 32 --rounds 3
    python -m bench.perf.domain_pass --model tiny-llama --out /tmp/dp.md pruner.clip=two_pass

G (which the regulariser reads) comes from the pruner's general pass over a few of the cell's
general windows: the domain pass's work depends on where G lives (on a CPU a scratch file read
one matrix at a time), not on its values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from bench.perf.worker import bench_parser, print_result, run_worker
from core.files import write_atomic
from core.paths import project_path

MODULE = "bench.perf.domain_pass"
GENERAL_WINDOWS = 2  # general windows G is computed from (its values do not change the pass's work)
TARGET = 1.3  # the domain pass's time over the plain step's, at most


@contextmanager
def domain_setup(model_name: str, domain: str, windows: int | None,
                 overrides: list[str]) -> Iterator[dict[str, Any]]:
    """The cell's model, domain windows, options and the pruner's inputs to its domain pass (G,
    the dense copy, in a scratch folder on a CPU), as `DPruner.prune_model` prepares them."""
    import torch

    from bench.perf.cell import bench_cell, pruner_overrides
    from core.files import scratch_folder
    from core.memory import peak_memory_mb
    from core.models import load_model, resolve_device
    from pruners.dpruner.general import compute_general_importance
    from pruners.dpruner.pruner import dense_copy

    sizes = [] if windows is None else [f"pruner.domain_calib.nsamples={windows}"]
    cfg, cell = bench_cell([*pruner_overrides("dpruner"), f"model={model_name}", f"domain={domain}",
                            "driver.progress=false", *sizes, *overrides])
    runtime_mb = peak_memory_mb()
    model, tokenizer = load_model(cfg.model)
    device = resolve_device(cfg.model.device)
    calibration = cell.calibration(tokenizer)
    pruner = cell.pruner
    o = pruner.options
    store = torch.device("cpu") if o.buffers_on_cpu else device
    with scratch_folder(o.scratch_dir, "dpruner-bench") if o.on_disk(device) else nullcontext() as scratch:
        G = {}
        if o.regularized:
            general = calibration["general"][:GENERAL_WINDOWS]
            G, _ = compute_general_importance(model, general, o, pruner.driver, device, store, scratch)
        original = dense_copy(model, scratch)  # also what each measurement restores the weights from
        yield {"model": model, "ids": calibration["domain"], "options": o, "device": device, "store": store,
               "G": G, "original": original, "runtime_mb": runtime_mb, "model_name": model_name,
               "domain": domain}


def restore(setup: dict[str, Any]) -> None:
    """The loaded weights again (both measurements move them)."""
    import torch

    from core.structure import model_linears

    with torch.no_grad():
        for name, linear in model_linears(setup["model"]).items():
            linear.weight.copy_(setup["original"][name].to(linear.weight.device))


def domain_pass(setup: dict[str, Any]) -> None:
    """The function `DPruner.prune_model` calls, with the cell's options."""
    from pruners.dpruner.domain import domain_importance

    o = setup["options"]
    dense = setup["original"] if o.update_weights else None
    domain_importance(setup["model"], setup["ids"], setup["G"], dense, o, setup["device"], setup["store"],
                      progress=False)


def plain_steps(setup: dict[str, Any]) -> None:
    """Plain training steps over the batches the domain pass reads (as many, in the same order):
    forward + backward of the same loss into the same matrices, then SGD at the pass's step size."""
    import torch

    from core.structure import model_linears
    from pruners.dpruner.domain import backprop_mode
    from pruners.dpruner.lm_loss import NextTokenLoss
    from pruners.driver import batches

    model, ids, o, device = setup["model"], setup["ids"], setup["options"], setup["device"]
    params = [linear.weight for linear in model_linears(model).values()]
    optimizer = torch.optim.SGD(params, lr=o.lr)
    chunks = batches(ids, o.batch_size)
    with backprop_mode(model, params, o.gradient_checkpointing, eager=False):
        loss = NextTokenLoss(model, o.loss_chunk, ids[:1, :16].to(device))
        for step in range(o.steps(ids.shape[0])):
            loss.backward(chunks[step % len(chunks)].to(device))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def timed(setup: dict[str, Any], work: Callable[[dict[str, Any]], None]) -> float:
    """Seconds of `work` from the loaded weights (restored beforehand, outside the clock)."""
    restore(setup)
    start = time.perf_counter()
    work(setup)
    return time.perf_counter() - start


def trajectory_tokens(ids: Any, options: Any) -> int:
    """Tokens one measurement reads: every batch of every step (epochs wrap around)."""
    from pruners.driver import batches

    chunks = batches(ids, options.batch_size)
    return sum(chunks[step % len(chunks)].numel() for step in range(options.steps(ids.shape[0])))


def measure_speed(setup: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Rounds of both measurements, alternating which runs first; seconds per round of each."""
    import torch

    from core.memory import peak_memory_mb

    seconds: dict[str, list[float]] = {"plain": [], "domain": []}
    kinds = {"plain": plain_steps, "domain": domain_pass}
    for r in range(rounds):
        for kind in (("plain", "domain") if r % 2 == 0 else ("domain", "plain")):
            seconds[kind].append(timed(setup, kinds[kind]))
    o, ids = setup["options"], setup["ids"]
    return {
        "model": setup["model_name"], "domain": setup["domain"], "windows": list(ids.shape),
        "tokens": trajectory_tokens(ids, o),
        "seconds": seconds, "peak_rss_mb": peak_memory_mb(), "runtime_rss_mb": setup["runtime_mb"],
        "threads": torch.get_num_threads(), "device": str(setup["device"]),
        "options": {key: getattr(o, key) for key in ("batch_size", "clip", "gradient_checkpointing",
                                                     "loss_chunk", "regularizer", "regularizer_grad",
                                                     "update_weights", "epochs", "scratch")},
    }


def measure_memory(setup: dict[str, Any]) -> dict[str, Any]:
    """One domain pass alone in this process: its seconds and the peak RSS it reaches."""
    from core.memory import peak_memory_mb

    before = peak_memory_mb()
    seconds = timed(setup, domain_pass)
    return {"windows": list(setup["ids"].shape), "seconds": seconds, "before_rss_mb": before,
            "peak_rss_mb": peak_memory_mb()}


def measure(kind: str, model_name: str, domain: str, windows: int | None, rounds: int,
            overrides: list[str]) -> dict[str, Any]:
    """`speed`: rounds of the plain step and the domain pass; `memory`: one domain pass."""
    with domain_setup(model_name, domain, windows, overrides) as setup:
        return measure_speed(setup, rounds) if kind == "speed" else measure_memory(setup)


def summary(seconds: list[float], tokens: int) -> dict[str, float]:
    """Median and spread of one measurement's rounds, and its tokens/s at the median."""
    median = statistics.median(seconds)
    return {"median_s": median, "min_s": min(seconds), "max_s": max(seconds), "tokens_per_s": tokens / median}


def analyse(speed: dict[str, Any]) -> dict[str, Any]:
    """Both measurements summarised, and the domain pass's time over the plain step's."""
    plain, domain = (summary(speed["seconds"][k], speed["tokens"]) for k in ("plain", "domain"))
    paired = [d / p for p, d in zip(speed["seconds"]["plain"], speed["seconds"]["domain"], strict=True)]
    return {"plain": plain, "domain": domain, "ratio": domain["median_s"] / plain["median_s"],
            "paired_ratios": paired}


def report(command: str, machine: str, speed: dict[str, Any], memory: list[dict[str, Any]]) -> str:
    """The Markdown report: tokens/s of both, their ratio, and peak RSS per window count."""
    a = analyse(speed)
    n, seqlen = speed["windows"]
    options = ", ".join(f"{k} {v}" for k, v in speed["options"].items())
    verdict = "within" if a["ratio"] <= TARGET else "above"
    lines = [
        f"# D-Pruner domain pass against a plain training step ({speed['model']}, "
        f"domain {speed['domain']})", "",
        f"Command: `{command}`  ", machine, "",
        f"{n} domain windows of {seqlen} tokens (the cell's own), {speed['tokens']} tokens per measurement; "
        f"pruner options: {options}. Rounds alternate which measurement runs first; the weights are "
        "restored before each.", "",
        "| measurement | seconds per round | median (s) | spread (s) | tokens/s (median) |",
        "|---|---|---:|---:|---:|",
    ]
    for kind, label in (("plain", "plain step (forward + backward + SGD)"), ("domain", "domain pass")):
        s = a[kind]
        rounds = ", ".join(f"{x:.1f}" for x in speed["seconds"][kind])
        lines.append(f"| {label} | {rounds} | {s['median_s']:.1f} | {s['min_s']:.1f}-{s['max_s']:.1f} "
                     f"| {s['tokens_per_s']:.0f} |")
    lines += [
        "", f"**Ratio domain pass / plain step: {a['ratio']:.2f}** (medians; per round "
        f"{', '.join(f'{r:.2f}' for r in a['paired_ratios'])}), {verdict} the target of {TARGET}. "
        f"Peak RSS of this process (both measurements): {speed['peak_rss_mb']:.0f} MiB "
        f"(runtime before the model loads {speed['runtime_rss_mb']:.0f} MiB).",
    ]
    if memory:
        lines += ["", "Memory against the number of windows: the domain pass alone, one fresh process per "
                  "window count (peak RSS is a per-process high-water mark).", "",
                  "| windows | domain pass (s) | peak RSS before the pass (MiB) | peak RSS (MiB) "
                  "| added by the pass (MiB) |",
                  "|---:|---:|---:|---:|---:|"]
        for m in memory:
            before, peak = m["before_rss_mb"], m["peak_rss_mb"]
            lines.append(f"| {m['windows'][0]}x{m['windows'][1]} | {m['seconds']:.1f} | {before:.0f} "
                         f"| {peak:.0f} | {peak - before:.0f} |")
    return "\n".join(lines) + "\n"


def machine_line(threads: int, device: str) -> str:
    """Where and when it ran; the load average says how busy the shared machine was."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "-"
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()} CPU, {cores} cores, {threads} "
            f"torch threads, device {device}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
            f"load average at the end {load} (a shared machine: see the spread).")


def main(argv: list[str] | None = None) -> None:
    """The speed rounds in one worker process, then one worker per memory window count."""
    parser = bench_parser(MODULE, __doc__)
    parser.add_argument("--windows", type=int, default=None,
                        help="domain windows of the speed rounds (default: the cell's domain_calib.nsamples)")
    parser.add_argument("--memory-windows", type=int, nargs="*", default=[8, 32],
                        help="window counts of the memory runs (none: skip them)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/bench/domain_pass.md", help="relative to the project root")
    parser.add_argument("--worker", choices=("speed", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. pruner.clip=two_pass")
    args = parser.parse_args(argv)
    if args.worker:
        print_result(measure(args.worker, args.model, args.domain, args.windows, args.rounds, args.overrides))
        return
    shared = ["--model", args.model, "--domain", args.domain, "--rounds", str(args.rounds)]
    windows = [] if args.windows is None else ["--windows", str(args.windows)]
    speed = run_worker(MODULE, ["speed", *shared, *windows, *args.overrides])
    print(f"speed: {json.dumps(analyse(speed))}", flush=True)
    memory = []
    for count in args.memory_windows:
        memory.append(run_worker(MODULE, ["memory", *shared, "--windows", str(count), *args.overrides]))
        print(f"memory {count} windows: peak RSS {memory[-1]['peak_rss_mb']:.0f} MiB", flush=True)
    command = " ".join(["python -m", MODULE, *(argv if argv is not None else sys.argv[1:])])
    text = report(command, machine_line(speed["threads"], speed["device"]), speed, memory)
    out = write_atomic(project_path(args.out), text)
    record = {"command": command, "speed": speed, "analysis": analyse(speed), "memory": memory}
    write_atomic(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
