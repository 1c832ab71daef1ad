"""The evidence for D-Pruner's regulariser default: a sweep over lambda (paper and anchored forms)
on real data, reporting how large the regulariser term is next to the gradient and what the
pruned model's domain and general perplexities are. One process, the model loaded once and
restored between cells; G is computed once (the pruner's cache).

    python -m bench.dpruner_lambda --domain legal        # writes results/bench/dpruner_lambda_legal.md
    python -m bench.dpruner_lambda --model tiny-llama --cells dense paper_0.1 --out /tmp/l.md eval=smoke
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# label -> pruner overrides (None: the dense model)
CELLS: dict[str, dict[str, Any] | None] = {
    "dense": None,
    "general_only": {"importance": "general_only"},
    "domain_only": {"importance": "domain_only"},
    "paper_0.1": {"lambda_": 0.1},
    "paper_1e6": {"lambda_": 1e6},
    "paper_1e9": {"lambda_": 1e9},
    "paper_1e12": {"lambda_": 1e12},
    "anchor_1": {"regularizer": "anchor", "lambda_": 1.0},
    "anchor_10": {"regularizer": "anchor", "lambda_": 10.0},
    "anchor_100": {"regularizer": "anchor", "lambda_": 100.0},
}


def run(model_name: str, domain: str, cells: list[str], out: Path, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from core.calibration import domain_windows
    from core.data import general_calibration, resolve_data_root
    from core.models import load_model, resolve_device
    from evals.suite import evaluate
    from pruners.base import Calibration

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"model={model_name}", f"domain={domain}", "pruner=dpruner",
                                           "driver.progress=false", *overrides])
    root = resolve_data_root(cfg.data.root)
    model, tokenizer = load_model(cfg.model)
    device = resolve_device(cfg.model.device)
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seed, size = int(cfg.seed), cfg.pruner.domain_calib
    calibration = Calibration(
        general=general_calibration(tokenizer, cfg.data.general.calib, root, int(cfg.calib.nsamples),
                                    int(cfg.calib.seqlen), seed),
        domain=domain_windows(tokenizer, cfg.domain.calib, root, int(size.nsamples), int(size.seqlen), seed))
    lines = [
        f"# D-Pruner lambda sweep ({model_name}, domain {domain}, sparsity {cfg.sparsity})", "",
        f"Command: `python -m bench.dpruner_lambda --model {model_name} --domain {domain} "
        f"{' '.join(overrides)}`. Pruner defaults from conf/pruner/dpruner.yaml; general calibration "
        f"{cfg.calib.nsamples}x{cfg.calib.seqlen}, domain {size.nsamples}x{size.seqlen}; eval preset "
        f"{cfg.eval.name} (window {cfg.eval.perplexity.window}). reg/grad = mean over matrices of "
        "mean |regulariser gradient| / mean |g| (median, max).", "",
    ]
    header = None
    for label in cells:
        model.load_state_dict(dense)
        options = CELLS[label]
        start = time.perf_counter()
        ratios: list[float] = []
        if options is not None:
            reports = instantiate(cfg.pruner, **options).prune(model, calibration, device)
            ratios = [r.notes.get("reg_ratio", 0.0) for r in reports]
        prune_seconds = time.perf_counter() - start
        result = evaluate(model, tokenizer, cfg.eval, cfg.domain, cfg.data.general, root, progress=False)
        metrics = result.metrics
        ppl = {k.removesuffix("/ppl"): v for k, v in metrics.items() if k.endswith("/ppl")}
        if header is None:
            header = list(ppl)
            lines += ["| cell | reg/grad mean | median | max | " + " | ".join(f"{k} ppl" for k in header)
                      + " | prune s |", "|---" * (len(header) + 5) + "|"]
        stats = ["-"] * 3 if not ratios else [f"{statistics.fmean(ratios):.3g}",
                                               f"{statistics.median(ratios):.3g}", f"{max(ratios):.3g}"]
        lines.append(f"| {label} | " + " | ".join(stats) + " | "
                     + " | ".join(f"{ppl[k]:.2f}" for k in header) + f" | {prune_seconds:.0f} |")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")  # partial results survive a kill
        print(lines[-1], flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--domain", default="legal")
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sparsity=0.6 eval=smoke")
    args = parser.parse_args(argv)
    out = Path(args.out or PROJECT_ROOT / f"results/bench/dpruner_lambda_{args.domain}.md")
    run(args.model, args.domain, args.cells, out, args.overrides)


if __name__ == "__main__":
    main()
