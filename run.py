"""One prune -> evaluate cell (or a Hydra multirun grid of them).

    python run.py                                    # D-Pruner, legal, 50 % (the default cell)
    python run.py pruner=wanda domain=healthcare
    python run.py -m pruner=magnitude,wanda,sparsegpt domain=healthcare,legal sparsity=0.5

Order of work: validate everything cheap (config values, data files, model availability) -> skip
the cell if its record exists -> load the model -> calibrate -> prune -> evaluate -> write the
record atomically -> log to W&B. Each step is one call into the package that owns it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.paths import CONF_DIR

GROUPS = ("model", "pruner", "domain", "calib", "eval", "logger", "experiment", "dpruner_variant")


def check_group_choices(argv: list[str]) -> None:
    """Name an unknown config-group choice in one line (before Hydra's longer message)."""
    for arg in argv[1:]:
        name, _, value = arg.lstrip("+~").partition("=")
        if name not in GROUPS or not value:
            continue
        known = sorted(p.stem for p in (CONF_DIR / name).glob("*.yaml"))
        for option in value.split(","):
            if option and option not in known:
                print(f"error: unknown {name} {option!r}; choose one of: {', '.join(known)}", file=sys.stderr)
                sys.exit(2)


check_group_choices(sys.argv)

import hydra  # noqa: E402  (after the cheap argument check)
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from bench.results.mask_files import save_masks  # noqa: E402
from bench.results.records import cell_config, finished, new_record, record_key, save_record  # noqa: E402
from bench.results.tracking import log_record, resolve_mode  # noqa: E402
from core.calibration import WindowRequest, build_calibration, calibration_files, calibration_settings  # noqa: E402
from core.checks import as_int  # noqa: E402
from core.data import resolve_data_root  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.memory import peak_memory_mb  # noqa: E402
from core.models import check_model, load_model, resolve_device, save_model  # noqa: E402
from core.paths import project_path  # noqa: E402
from core.structure import sparsity_summary  # noqa: E402
from evals.suite import check_eval_inputs, evaluate  # noqa: E402
from pruners import Pruner, from_config  # noqa: E402


@dataclass
class Cell:
    """A validated cell: everything known before any weights load."""

    pruner: Pruner
    requests: dict[str, WindowRequest]
    data_root: Path
    config: dict[str, Any]
    key: str
    results_dir: Path


def validate(cfg: DictConfig) -> Cell:
    """Every setting and file the cell will use, checked before any heavy work."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    as_int("seed", plain["seed"])
    pruner = from_config(plain["pruner"], sparsity=plain["sparsity"], pattern=plain["pattern"],
                         driver=plain["driver"])
    root = resolve_data_root(cfg.data.root)
    WindowRequest.from_calib(cfg.calib)  # the calib group is checked even where a method ignores it
    requests = pruner.calibration_requests(cfg.calib)
    calibration_files(requests, cfg.data.general.calib, cfg.domain.calib, root)
    check_eval_inputs(cfg.domain, cfg.data.general, root)
    if cfg.logger.name == "wandb":
        resolve_mode(cfg.logger.mode)
    check_model(cfg.model)
    config = cell_config(plain, dense=pruner.name == "dense", sparsity=pruner.sparsity,
                         pattern=str(pruner.pattern), calib=calibration_settings(requests, cfg.calib))
    return Cell(pruner, requests, root, config, record_key(config), project_path(cfg.results.dir))


def run_cell(cfg: DictConfig) -> Path | None:
    cell = validate(cfg)
    if finished(cell.results_dir, cell.key) and not cfg.force:
        print(f"skip: cell {cell.key} already done ({cell.results_dir / (cell.key + '.json')}); "
              "force=true re-runs it")
        return None

    torch.manual_seed(int(cfg.seed))
    device = resolve_device(cfg.model.device)
    print(f"load: model {cfg.model.name} on {device}", flush=True)
    model, tokenizer = load_model(cfg.model)
    calibration = build_calibration(cell.requests, tokenizer, cfg.data.general.calib, cfg.domain.calib,
                                    cell.data_root, int(cfg.seed))
    start = time.perf_counter()
    reports = cell.pruner.prune(model, calibration, device)
    prune_seconds = time.perf_counter() - start
    evaluation = evaluate(model, tokenizer, cfg.eval, cfg.domain, cfg.data.general, cell.data_root,
                          progress=bool(cfg.driver.progress))

    record = new_record(
        cell.key, cell.config, pruner=cell.pruner.name,
        calib_source=cell.requests["ids"].source if "ids" in cell.requests else None,
        metrics=evaluation.metrics, sparsity=sparsity_summary(model), prune_seconds=prune_seconds,
        prune_stages=cell.pruner.stages,
        matrices=[r.as_dict() for r in reports], eval_seconds=evaluation.seconds,
        eval_details=evaluation.details, samples=evaluation.samples,
        memory={"peak_rss_mb": peak_memory_mb(),
                "peak_cuda_mb": peak_memory_mb(device) if device.type == "cuda" else None})
    if cfg.save_masks:
        save_masks(model, cell.results_dir / "masks" / f"{cell.key}.npz")
        record["masks"] = f"masks/{cell.key}.npz"  # relative to the record's folder
    if cfg.save_model:
        folder = cell.results_dir.parent / "models" / cell.key
        record["saved_model"] = str(save_model(model, tokenizer, folder))
    path = save_record(cell.results_dir, record)
    log_record(record, cfg.logger)
    shown = ", ".join(f"{k}={v:.3f}" for k, v in evaluation.metrics.items() if k.endswith("/ppl"))
    print(f"done: {cell.pruner.name} {cfg.domain.name} sparsity={record['sparsity']['achieved']:.3f} "
          f"prune={prune_seconds:.0f}s eval={evaluation.seconds:.0f}s {shown} -> {path}")
    return path


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_cell(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed cell; the grid's other cells still run
        sys.exit(2)


if __name__ == "__main__":
    main()
