"""GPU check: the embedded model in bfloat16 on CUDA through every method (and OWL, and D-Pruner
with reconstruction), each cell built as run.py builds it, then scored on the `smoke` perplexity
windows of the domain and general texts: prune seconds, peak GPU memory, achieved sparsity,
perplexities. The lm-eval tasks are left out (the check must run where only torch and
transformers are installed); the perplexities show that the pruned bf16 model still computes.

    python -m bench.perf.gpu_check                          # cuda, bfloat16, legal
    python -m bench.perf.gpu_check --device cpu --dtype float32 --series wanda,dpruner   # a dry run

Figures go to results/bench/gpu_check.md and .json (`--out`)."""

from __future__ import annotations

import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.perf.worker import bench_parser
from core.files import write_atomic
from core.paths import project_path

SERIES = {  # label -> overrides of the default cell
    "dense": ["pruner=dense"],
    "magnitude": ["pruner=magnitude"],
    "wanda": ["pruner=wanda"],
    "sparsegpt": ["pruner=sparsegpt"],
    "dpruner": ["pruner=dpruner"],
    "wanda owl 0.7": ["pruner=wanda", "sparsity=0.7", "allocation=owl"],
    "dpruner reconstruct=mixed": ["pruner=dpruner", "pruner.reconstruct=mixed", "calib=mixed"],
}


def measure(overrides: list[str]) -> dict[str, Any]:
    """One cell: load, calibrate, prune (timed, peak memory), smoke perplexities."""
    import torch

    from bench.perf.cell import bench_cell
    from core.data import load_texts, resolve_data_root
    from core.models import load_model, resolve_device
    from core.structure import sparsity_summary
    from evals.perplexity import perplexity_settings, perplexity_sources, strided_perplexity

    no_cache = ["pruner.cache_dir=null"] if "pruner=dpruner" in overrides else []  # G computed and timed
    cfg, cell = bench_cell([*overrides, *no_cache, "eval=smoke", "driver.progress=false"])
    device = resolve_device(cfg.model.device)
    model, tokenizer = load_model(cfg.model)
    pruner = cell.pruner
    windows = cell.calibration(tokenizer)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    pruner.prune(model, windows, device)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    settings, root = perplexity_settings(cfg.eval.perplexity), resolve_data_root(cfg.data.root)
    ppl = {key: strided_perplexity(model, tokenizer, load_texts(spec, root, key), settings.window,
                                   settings.stride, settings.max_windows, settings.batch_size,
                                   progress=False, label=key).ppl
           for key, spec in perplexity_sources(cfg.domain, cfg.data.general).items()}
    return {"prune_seconds": seconds, "stages": pruner.stages,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
            "sparsity": sparsity_summary(model)["achieved"], "ppl": ppl,
            "dtype": str(next(model.parameters()).dtype), "device": str(device)}


def table(results: dict[str, dict[str, Any]], environment: dict[str, str]) -> str:
    texts = sorted({k for r in results.values() if "ppl" in r for k in r["ppl"]})
    lines = [f"# GPU check ({environment['when']})", "",
             f"`{environment['command']}` on {environment['gpu']}; torch {environment['torch']}, "
             f"transformers {environment['transformers']}.", "",
             "| series | prune s | peak GPU MiB | sparsity | " + " | ".join(f"{t} ppl" for t in texts) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(texts)]
    for label, r in results.items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} |")
            continue
        peak = "" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
        lines.append(f"| {label} | {r['prune_seconds']:.1f} | {peak} | {r['sparsity']:.3f} | "
                     + " | ".join(f"{r['ppl'][t]:.2f}" for t in texts) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser("bench.perf.gpu_check", __doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--series", default=",".join(SERIES),
                        help=f"comma-separated, of: {', '.join(SERIES)}")
    parser.add_argument("--out", default="results/bench/gpu_check.md")
    args = parser.parse_args()
    unknown = [s for s in args.series.split(",") if s not in SERIES]
    if unknown:
        parser.error(f"unknown series {unknown}; choose from {list(SERIES)}")
    import torch
    import transformers

    common = [f"model={args.model}", f"model.device={args.device}", f"model.dtype={args.dtype}",
              f"domain={args.domain}"]
    results = {}
    for label in args.series.split(","):
        try:
            results[label] = measure([*SERIES[label], *common])
        except Exception as err:  # noqa: BLE001  (a check reports every series, failed ones too)
            results[label] = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(label, json.dumps(results[label], default=str), flush=True)
    environment = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                   "command": f"python -m bench.perf.gpu_check --device {args.device} --dtype {args.dtype} "
                              f"--model {args.model} --domain {args.domain}",
                   "gpu": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                           else platform.machine()),
                   "torch": torch.__version__, "transformers": transformers.__version__}
    out = project_path(args.out)
    write_atomic(out, table(results, environment))
    write_atomic(Path(out).with_suffix(".json"), json.dumps({"environment": environment, "results": results},
                                                            indent=1, default=str))
    print(table(results, environment))


if __name__ == "__main__":
    main()
