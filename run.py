"""One prune -> evaluate cell (or a Hydra multirun grid of them).

    python run.py pruner=wanda domain=legal
    python run.py -m pruner=magnitude,wanda,sparsegpt domain=healthcare,legal sparsity=0.5

Order of work: validate everything cheap (config values, data files, model availability), skip
the cell if its record exists, then load the model, prune, evaluate, write the record
atomically, and only then log to W&B."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent
CONF_DIR = PROJECT_ROOT / "conf"
GROUPS = ("model", "pruner", "domain", "calib", "eval", "logger", "experiment")


def check_group_choices(argv: list[str]) -> None:
    """Name an unknown config-group choice in one line (before Hydra's longer message)."""
    for arg in argv[1:]:
        name, _, value = arg.lstrip("+~").partition("=")
        if name not in GROUPS or not value:
            continue
        known = sorted(p.stem for p in (CONF_DIR / name).glob("*.yaml"))
        for choice in value.split(","):
            if choice and choice not in known:
                print(f"error: unknown {name} {choice!r}; choose one of: {', '.join(known)}", file=sys.stderr)
                sys.exit(2)


check_group_choices(sys.argv)

import hydra  # noqa: E402  (after the cheap argument check)
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from bench.masks import save_masks  # noqa: E402
from bench.records import finished, record_key, save_record  # noqa: E402
from bench.tracking import log_record, resolve_mode  # noqa: E402
from core.calibration import domain_windows, mixed_windows  # noqa: E402
from core.data import data_path, general_calibration, resolve_data_root  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.models import check_model, load_model, resolve_device  # noqa: E402
from evals.suite import check_eval_inputs, evaluate  # noqa: E402
from pruners import Calibration, Pruner  # noqa: E402
from pruners.base import peak_memory_mb, sparsity_summary  # noqa: E402

CALIB_SOURCES = ("general", "domain", "mixed")
PACKAGES = ("torch", "transformers", "lm_eval", "hydra-core", "wandb", "datasets", "dpruner-bench")


def cell_config(cfg: DictConfig, pruner: Pruner) -> dict[str, Any]:
    """The resolved config, normalised so that equivalent cells share one key: the dense model
    has no sparsity or pattern, data-free methods have no calibration, and methods that do not
    take `calib.source` do not depend on it."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if pruner.name == "dense":
        config["sparsity"], config["pattern"] = 0.0, "unstructured"
        config["pruner"].update(sparsity=0.0, pattern="unstructured")
    if not pruner.needs:
        config.pop("calib", None)
    elif "ids" not in pruner.needs:  # D-Pruner reads only the calibration sizes
        config["calib"] = {k: config["calib"][k] for k in ("nsamples", "seqlen")}
    return config


def check_inputs(cfg: DictConfig, pruner: Pruner, root: Path) -> None:
    """All files and settings a cell needs, checked before any weights load."""
    source = cfg.calib.source
    if "ids" in pruner.needs and source not in CALIB_SOURCES:
        raise ConfigError(f"calib.source={source!r}; choose one of {', '.join(CALIB_SOURCES)}")
    if "general" in pruner.needs or ("ids" in pruner.needs and source != "domain"):
        data_path(root, cfg.data.general.calib.path)
    if "domain" in pruner.needs or ("ids" in pruner.needs and source != "general"):
        for spec in (cfg.domain.get("calib") or {}).get("sources", {}).values():
            data_path(root, spec.path)
    check_eval_inputs(cfg.domain, cfg.data.general, root)
    if cfg.logger.name == "wandb":
        resolve_mode(cfg.logger.mode)
    check_model(cfg.model)


def calibration_for(pruner: Pruner, cfg: DictConfig, tokenizer: Any, root: Path) -> Calibration:
    """The token windows the method asked for (`needs`), seeded: `ids` from `calib.source`
    (general C4, the domain's calibration texts, or a mix), or D-Pruner's general and domain sets."""
    n, seqlen, seed = int(cfg.calib.nsamples), int(cfg.calib.seqlen), int(cfg.seed)
    source = cfg.calib.source
    wants_general = "general" in pruner.needs or ("ids" in pruner.needs and source != "domain")
    wants_domain = "ids" in pruner.needs and source != "general"
    general = general_calibration(tokenizer, cfg.data.general.calib, root, n, seqlen, seed) \
        if wants_general else None
    domain = domain_windows(tokenizer, cfg.domain.calib, root, n, seqlen, seed) if wants_domain else None
    calibration = Calibration()
    if "ids" in pruner.needs:
        calibration.ids = {"general": general, "domain": domain}.get(source)
        if source == "mixed":
            calibration.ids = mixed_windows(general, domain, float(cfg.calib.mix))
    if "general" in pruner.needs:
        calibration.general = general
    if "domain" in pruner.needs:
        sizes = cfg.pruner.get("domain_calib") or cfg.calib
        calibration.domain = domain_windows(tokenizer, cfg.domain.calib, root, int(sizes.nsamples),
                                            int(sizes.seqlen), seed)
    return calibration


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_pruner(pruner_cfg: DictConfig) -> Pruner:
    """Instantiate the `_target_` class; its constructor validates every value."""
    options = OmegaConf.to_container(pruner_cfg, resolve=True)
    target = options.pop("_target_")
    cls = hydra.utils.get_class(target)
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(f"{target}: {err}") from err


def save_pruned(model: Any, tokenizer: Any, folder: Path) -> Path:
    """save_pretrained into a temp folder, then rename: a killed save leaves no half model."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def run_cell(cfg: DictConfig) -> Path | None:
    pruner = build_pruner(cfg.pruner)
    root = resolve_data_root(cfg.data.root)
    check_inputs(cfg, pruner, root)
    config = cell_config(cfg, pruner)
    key = record_key(config)
    results_dir = Path(cfg.results.dir)
    results_dir = results_dir if results_dir.is_absolute() else PROJECT_ROOT / results_dir
    if finished(results_dir, key) and not cfg.force:
        print(f"skip: cell {key} already done ({results_dir / (key + '.json')}); force=true re-runs it")
        return None

    torch.manual_seed(int(cfg.seed))
    device = resolve_device(cfg.model.device)
    model, tokenizer = load_model(cfg.model)
    calibration = calibration_for(pruner, cfg, tokenizer, root)

    start = time.perf_counter()
    reports = pruner.prune(model, calibration, device)
    prune_seconds = time.perf_counter() - start
    sparsity = sparsity_summary(model)

    evaluation = evaluate(model, tokenizer, cfg.eval, cfg.domain, cfg.data.general, root,
                          progress=bool(cfg.driver.progress))
    record = {
        "key": key, "version": 1, "status": "done",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cell": {"model": cfg.model.name, "pruner": pruner.name, "domain": cfg.domain.name,
                 "sparsity": config["sparsity"], "pattern": config["pattern"],
                 "calib": cfg.calib.source if "ids" in pruner.needs else None, "seed": int(cfg.seed),
                 "eval": cfg.eval.name},
        "config": config,
        "metrics": evaluation.metrics,
        "sparsity": {"target": pruner.target_sparsity, **sparsity},
        "prune": {"seconds": prune_seconds, "matrices": [r.as_dict() for r in reports]},
        "eval": {"seconds": evaluation.seconds, "details": evaluation.details},
        "memory": {"peak_rss_mb": peak_memory_mb(),
                   "peak_cuda_mb": peak_memory_mb(device) if device.type == "cuda" else None},
        "versions": versions(), "git": git_revision(), "samples": evaluation.samples, "masks": None,
    }
    if cfg.save_masks:
        save_masks(model, results_dir / "masks" / f"{key}.npz")
        record["masks"] = f"masks/{key}.npz"  # relative to the record's folder
    if cfg.save_model:
        record["saved_model"] = str(save_pruned(model, tokenizer, results_dir.parent / "models" / key))
    path = save_record(results_dir, record)
    log_record(record, cfg.logger, PROJECT_ROOT)
    shown = ", ".join(f"{k}={v:.3f}" for k, v in evaluation.metrics.items() if k.endswith("/ppl"))
    print(f"done: {pruner.name} {cfg.domain.name} sparsity={sparsity['achieved']:.3f} "
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
