"""Cost of D-Pruner against SparseGPT on one model: wall time (D-Pruner per stage) and peak
resident memory. Each method runs in its own process, since peak RSS is a per-process
high-water mark; both use the project's configs (conf/), so the calibration sizes are the
defaults a cell would use. D-Pruner runs without its G cache, so its general pass is timed.

    python -m bench.dpruner_cost                      # default model, legal domain
    python -m bench.dpruner_cost --model tiny-llama --out /tmp/cost.md
    python -m bench.dpruner_cost --methods dpruner --out /tmp/disk.md pruner.offload=disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sparsegpt", "dpruner")


def measure(method: str, model_name: str, domain: str, overrides: list[str]) -> dict[str, Any]:
    """Load, calibrate and prune once in this process; returns times and memory."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from core.calibration import domain_windows
    from core.data import general_calibration, resolve_data_root
    from core.models import load_model, resolve_device
    from pruners.base import Calibration, peak_memory_mb

    extra = ["pruner.cache_dir=null"] if method == "dpruner" else []
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"pruner={method}", f"model={model_name}", f"domain={domain}",
                                           "driver.progress=false", *extra, *overrides])
    root = resolve_data_root(cfg.data.root)
    runtime = peak_memory_mb(torch.device("cpu"))  # interpreter, torch, Hydra: no model yet
    model, tokenizer = load_model(cfg.model)
    device = resolve_device(cfg.model.device)
    pruner = instantiate(cfg.pruner)
    n, seqlen, seed = int(cfg.calib.nsamples), int(cfg.calib.seqlen), int(cfg.seed)
    general = general_calibration(tokenizer, cfg.data.general.calib, root, n, seqlen, seed)
    calibration = Calibration(ids=general, general=general)
    if "domain" in pruner.needs:
        size = cfg.pruner.domain_calib
        calibration.domain = domain_windows(tokenizer, cfg.domain.calib, root, int(size.nsamples),
                                            int(size.seqlen), seed)
    with torch.no_grad():  # page in weights loaded lazily, so the baseline includes the model
        sum(float(p.sum()) for p in model.parameters())
    loaded = peak_memory_mb(device)
    start = time.perf_counter()
    pruner.prune(model, calibration, device)
    seconds = time.perf_counter() - start
    fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    return {
        "method": method, "seconds": seconds, "stages": getattr(pruner, "stages", {}),
        "peak_rss_mb": peak_memory_mb(device), "loaded_rss_mb": loaded, "runtime_rss_mb": runtime,
        "model_fp32_mb": fp32_mb,
        "general": list(general.shape), "threads": torch.get_num_threads(), "device": str(device),
        "domain": None if calibration.domain is None else list(calibration.domain.shape),
    }


def table(results: list[dict[str, Any]], model_name: str, domain: str) -> str:
    """Markdown report of the measurements."""
    base = next((r for r in results if r["method"] == "sparsegpt"), results[0])
    lines = [
        f"# D-Pruner cost vs SparseGPT ({model_name}, domain {domain})", "",
        f"Command: `python -m bench.dpruner_cost --model {model_name} --domain {domain}`; "
        f"{platform.processor() or platform.machine()}, {base['threads']} torch threads, "
        f"device {base['device']}. fp32 model size {base['model_fp32_mb']:.0f} MiB.", "",
        "| method | calibration | prune time (s) | stages: time / peak RSS so far | x SparseGPT time "
        "| peak RSS (MiB) | peak RSS / fp32 model | (peak RSS - runtime) / fp32 model "
        "| RSS added by pruning (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        calib = f"general {r['general'][0]}x{r['general'][1]}"
        if r["method"] == "dpruner" and r["domain"]:
            calib += f", domain {r['domain'][0]}x{r['domain'][1]}"
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--domain", default="legal")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "results/bench/dpruner_cost.md"))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. pruner.batch_size=8")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.model, args.domain, args.overrides)))
        return
    results = []
    for method in args.methods:  # one process each, one at a time
        command = [sys.executable, "-m", "bench.dpruner_cost", "--worker", method, "--model", args.model,
                   "--domain", args.domain, *args.overrides]
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{method} failed:\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{method}: {results[-1]['seconds']:.1f}s, peak RSS {results[-1]['peak_rss_mb']:.0f} MiB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        stream.write(table(results, args.model, args.domain))
    os.replace(staged, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
