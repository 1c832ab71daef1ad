"""A cell checked before any weights load: every config value typed and ranged, every data file
read with the reader the run uses (bad bytes, malformed lines, empty texts fail here), windows
against the model's context (from its config), the results folder probed, and the record key
computed from the normalised config plus a content fingerprint of every data file read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.results.records import cell_config, git_revision, probe_results_dir, record_key
from bench.results.tracking import resolve_mode
from core.calibration import WindowRequest, calibration_files, calibration_settings, check_context
from core.checks import as_bool, as_int
from core.data import resolve_data_root
from core.distributed import World, check_shares
from core.fingerprint import fingerprints
from core.models import check_device_map, check_model, check_shard_rows, model_context
from core.paths import project_path
from evals.suite import check_eval_inputs, check_eval_settings
from pruners import Allocation, Pruner, from_config


@dataclass
class Cell:
    """A validated cell: everything known before any weights load."""

    pruner: Pruner
    requests: dict[str, WindowRequest]
    data_root: Path
    config: dict[str, Any]
    key: str
    results_dir: Path


def validate(cfg: DictConfig, world: World | None = None) -> Cell:
    """Every setting and file the cell will use, checked (files read with the run's own
    readers) before any weights load."""
    git_revision()  # the code this process runs, fixed before any later cell's record
    plain = OmegaConf.to_container(cfg, resolve=True)
    as_int("seed", plain["seed"])
    for flag in ("force", "save_masks", "save_model"):
        as_bool(flag, plain[flag])
    pruner = from_config(plain["pruner"], sparsity=plain["sparsity"], pattern=plain["pattern"],
                         driver=plain["driver"], allocation=Allocation.of(plain["allocation"], plain["owl"]))
    root = resolve_data_root(cfg.data.root)
    WindowRequest.from_calib(cfg.calib)  # the calib group is checked even where a method ignores it
    requests = pruner.calibration_requests(cfg.calib)
    if cfg.logger.name == "wandb":
        resolve_mode(cfg.logger.mode)
    check_model(cfg.model)
    world = world or World()
    check_device_map(cfg.model, pruner.name, world.size)
    check_shard_rows(cfg.model, pruner.row_shards, pruner.name)
    check_shares(requests, world)
    context = model_context(cfg.model)
    check_context(requests, context)
    check_eval_settings(cfg.eval, context, cfg.domain)
    results_dir = project_path(cfg.results.dir)
    probe_results_dir(results_dir)
    files = calibration_files(requests, cfg.data.general.calib, cfg.domain.calib, root)
    files += check_eval_inputs(cfg.domain, cfg.data.general, root)
    config = cell_config(plain, dense=pruner.name == "dense", sparsity=pruner.sparsity,
                         pattern=str(pruner.pattern), allocation=pruner.allocation.kind,
                         calib=calibration_settings(requests, cfg.calib))
    cache = cfg.data.get("fingerprint_cache")
    config["inputs"] = fingerprints(files, root, project_path(cache) if cache else None)
    return Cell(pruner, requests, root, config, record_key(config), results_dir)
