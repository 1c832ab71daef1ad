"""The released D-Pruner recipe's domain budget (`+dpruner_variant=released`) in tokens of the
default model's tokenizer, built exactly as a cell builds its windows, next to the default
D-Pruner budget; and a rough CPU cost from a short timed domain pass over its first batches.

    python -m bench.perf.released_budget                      # writes results/bench/released_budget.md
    python -m bench.perf.released_budget --timed-steps 0      # the counts only
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import replace
from typing import Any

import torch

from bench.cell import ValidatedCell
from bench.perf.cell import bench_cell
from core.calibration import ExampleWindows, WindowRequest
from core.files import write_atomic
from core.paths import project_path
from pruners.dpruner import DPruner

MODULE = "bench.perf.released_budget"
OVERRIDES = ["pruner=dpruner", "+dpruner_variant=released", "domain=legal", "pruner.cache_dir=null"]


def count(windows: ExampleWindows, request: WindowRequest, batch: int, epochs: int) -> dict[str, int]:
    """Examples, real and padded tokens per epoch, how many examples were truncated, steps."""
    lengths = windows.lengths
    padded = sum(int(mask.shape[0] * mask.shape[1]) for _, mask in windows.batches(batch))
    return {"examples": len(windows), "tokens": int(lengths.sum()), "padded": padded,
            "truncated": int((lengths == request.seqlen).sum()), "longest": int(lengths.max()),
            "steps": math.ceil(len(windows) / batch) * epochs}


def windows_of(cell: ValidatedCell, request: WindowRequest, tokenizer: Any) -> ExampleWindows:
    """The cell's own domain windows, drawn as the cell draws them, for one source selection."""
    return replace(cell, requests={"domain": request}).calibration(tokenizer)["domain"]


def selections(request: WindowRequest) -> dict[str, WindowRequest]:
    """The variant's selection, each of its sources alone, and all of CaseHOLD train."""
    chosen = {"released variant": request}
    for name, limit in request.sources or ():
        chosen[f"  {name} only"] = WindowRequest("domain", None, request.seqlen, windows=request.windows,
                                                 sources=((name, limit),))
    chosen["all CaseHOLD train"] = WindowRequest("domain", None, request.seqlen, windows=request.windows,
                                                 sources=(("casehold", None),))
    return chosen


def timed_pass(cfg: Any, pruner: DPruner, windows: ExampleWindows, steps: int) -> dict[str, float]:
    """Seconds per padded token of one backward pass, from `steps` steps of the released options
    (epochs 1 over the first batches; G zeros, so the regulariser is computed but adds nothing)."""
    from core.models import load_model, resolve_device
    from core.structure import model_linears
    from pruners.dpruner.domain import domain_importance

    options = replace(pruner.options, epochs=1)
    batch = options.batch_size
    head = ExampleWindows(windows.ids[: steps * batch], windows.lengths[: steps * batch])
    model, _ = load_model(cfg.model)
    device = resolve_device(cfg.model.device)
    G = {name: torch.zeros(linear.weight.shape) for name, linear in model_linears(model).items()}
    start = time.perf_counter()
    domain_importance(model, head, G, None, options, device, device, progress=False)
    seconds = time.perf_counter() - start
    load = os.getloadavg()[0]  # other work on the machine slows the pass: say how much there was
    passes = 2 if options.clip == "two_pass" else 1
    padded = sum(int(mask.numel()) for _, mask in head.batches(batch)) * passes
    return {"seconds": seconds, "padded_token_passes": padded, "per_token": seconds / padded,
            "passes": passes, "threads": torch.get_num_threads(), "device": str(device), "load": load,
            "cores": os.cpu_count()}


def report(cfg: Any, counts: dict[str, dict[str, int]], timing: dict[str, float] | None, command: str) -> str:
    size = cfg.pruner.domain_calib
    default = 32 * 256  # conf/pruner/dpruner.yaml: domain_calib 32 x 256, one epoch
    epochs, batch = cfg.pruner.epochs, cfg.pruner.batch_size
    lines = [
        "# The released D-Pruner recipe: domain budget", "",
        f"Command: `{command}`; model {cfg.model.name} (its tokenizer), domain {cfg.domain.name}, "
        f"seed {cfg.seed}. Windows built as a cell builds them: `pruner.domain_calib` windows="
        f"{size.windows}, seqlen={size.seqlen}, nsamples={size.nsamples}, sources="
        f"{dict(size.sources) if size.sources else None}; batch {batch}, {epochs} epochs.", "",
        "Tokens are the windows' input tokens (each example as the tokenizer encodes one text, cut at "
        f"{size.seqlen}); padded tokens are what the batches compute (each batch padded to its longest, "
        "padding outside the loss). The default D-Pruner budget is 32 x 256 = 8,192 tokens, once.", "",
        "| selection | examples | truncated at seqlen | longest | tokens / epoch | padded / epoch "
        f"| tokens x {epochs} epochs | optimizer steps | x default budget (tokens x epochs / 8,192) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in counts.items():
        total = c["tokens"] * epochs
        lines.append(f"| {name} | {c['examples']:,} | {c['truncated']:,} | {c['longest']:,} "
                     f"| {c['tokens']:,} | {c['padded']:,} | {total:,} | {c['steps']:,} "
                     f"| {total / default:,.0f} |")
    if timing:
        released = counts["released variant"]
        passes = timing["passes"]
        hours = released["padded"] * epochs * passes * timing["per_token"] / 3600
        lines += [
            "", "## Rough cost on this machine", "",
            f"A short timed domain pass of the released options ({timing['padded_token_passes']:,} padded "
            f"token-passes: the first batches, {passes} backward passes per step with clip=two_pass) took "
            f"{timing['seconds']:.0f} s on {platform.processor() or platform.machine()} "
            f"({timing['cores']} cores, load average {timing['load']:.1f} at the end), "
            f"{timing['threads']} torch threads, device {timing['device']}: "
            f"{timing['per_token'] * 1000:.2f} ms per padded token-pass. The released variant's "
            f"{released['padded']:,} padded tokens x {epochs} epochs x {passes} passes would take about "
            f"**{hours:.1f} hours** of domain pass here (an estimate: a shared CPU, a few batches, the "
            "general pass not included).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timed-steps", type=int, default=2, help="steps of the timed pass (0: no timing)")
    parser.add_argument("--out", default="results/bench/released_budget.md")
    args = parser.parse_args()
    from core.models import load_tokenizer

    cfg, cell = bench_cell([*OVERRIDES, "driver.progress=false"])
    request = cell.requests["domain"]
    tokenizer = load_tokenizer(cfg.model)
    built = {name: windows_of(cell, one, tokenizer) for name, one in selections(request).items()}
    counts = {name: count(windows, request, cfg.pruner.batch_size, cfg.pruner.epochs)
              for name, windows in built.items()}
    timing = (timed_pass(cfg, cell.pruner, built["released variant"], args.timed_steps)
              if args.timed_steps else None)
    command = f"python -m {MODULE}" + ("" if args.timed_steps == 2 else f" --timed-steps {args.timed_steps}")
    path = write_atomic(project_path(args.out), report(cfg, counts, timing, command))
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
