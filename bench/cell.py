"""A cell checked before any weights load: every config value typed and ranged, every data file
read with the reader the run uses (bad bytes, malformed lines, empty texts fail here), windows
against the model's context (from its config), the results folder probed, and the record key
computed from the normalised config plus a content fingerprint of every data file read: the
hash of the very bytes the cell reads (once, core/snapshot.py) for calibration and evaluation."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bench.results.records import cell_config, probe_results_dir, record_key
from bench.results.tracking import resolve_mode
from bench.schema import checked_config
from core.calibration import (
    Calibration,
    WindowRequest,
    build_calibration,
    calibration_files,
    calibration_settings,
    check_context,
)
from core.checks import as_int
from core.data import CACHE_ENV, resolve_data_root
from core.distributed import World, check_shares
from core.evaluated import EvaluatedTexts
from core.files import check_folder_setting
from core.fingerprint import fingerprints
from core.models import (
    check_device_map,
    check_model,
    check_shard_rows,
    counting_tokenizer,
    model_context,
    prunable_in_features,
)
from core.paths import project_path
from core.snapshot import Snapshot, start_cell
from evals.suite import check_eval_inputs, check_eval_settings, evaluated_texts
from pruners import REGISTRY, Allocation, Pruner, from_config

RESUME_DIR = "resume"  # under the results folder: progress of cells that were interrupted


@dataclass
class ValidatedCell:
    """A cell checked before any weights load: its method, the windows it reads and where they
    come from, its normalised config and record key."""

    pruner: Pruner
    requests: dict[str, WindowRequest]
    data_root: Path
    config: dict[str, Any]
    key: str
    results_dir: Path
    general_calib: Mapping[str, Any]  # data.general.calib: the open-domain calibration text
    domain_calib: Mapping[str, Any]  # domain.calib: the domain's calibration sources
    seed: int
    inputs: Snapshot  # the bytes of every data file the cell reads, as hashed into its key
    evaluated: EvaluatedTexts | None = None  # domain.calib.exclude_evaluated: what the domain texts omit

    def calibration(self, tokenizer: Any) -> Calibration:
        """The windows the cell's method asked for, drawn with the cell's seed."""
        return build_calibration(self.requests, tokenizer, self.general_calib, self.domain_calib,
                                 self.data_root, self.seed, self.evaluated)

    @property
    def resume_folder(self) -> Path:
        """Where a long pass of this cell saves its progress until the record is written."""
        return self.results_dir / RESUME_DIR / self.key

    def discard_resume_state(self) -> None:
        """Remove the cell's saved progress once its record exists (and the folder, when empty)."""
        shutil.rmtree(self.resume_folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.resume_folder.parent.rmdir()

    def check_inputs(self) -> None:
        """Before the record is written: every data file still holds the bytes the cell read and
        its key names (a ConfigError names one that changed while the cell ran)."""
        self.inputs.check_unchanged()


def build_pruner(plain: Mapping[str, Any]) -> Pruner:
    """The cell's method from its resolved config: the one builder of run.py and every benchmark,
    so that no cell setting (sparsity, pattern, driver, allocation) can be left out by a second."""
    return from_config(plain["pruner"], sparsity=plain["sparsity"], pattern=plain["pattern"],
                       driver=plain["driver"], allocation=Allocation.of(plain["allocation"], plain["owl"]))


def validate(cfg: DictConfig, world: World | None = None) -> ValidatedCell:
    """Every setting and file the cell will use, checked (files read with the run's own
    readers) before any weights load."""
    plain = checked_config(cfg)  # every key declared, every value normalised (bench/schema.py)
    inputs = start_cell()  # a fresh copy of the files this cell reads: no other cell's bytes
    seed = as_int("seed", plain["seed"], 0)  # whole by the schema; numpy's generators refuse < 0
    pruner = build_pruner(plain)
    world = world or World()
    pruner.check_world(world)
    check_cache_folders(plain)
    root = resolve_data_root(cfg.data.root)
    WindowRequest.from_calib(cfg.calib)  # the calib group is checked even where a method ignores it
    requests = pruner.calibration_requests(cfg.calib)
    if cfg.logger.name == "wandb":
        resolve_mode(cfg.logger.mode)
    check_model(cfg.model)
    check_device_map(cfg.model, world.size, pruner.moves_whole_model, pruner.name)
    check_shard_rows(cfg.model, pruner.row_shards, pruner.name, row_shard_methods())
    check_shares(requests, world)
    context = model_context(cfg.model)
    check_context(requests, context)
    if pruner.pattern.structured:
        pruner.pattern.check_widths(prunable_in_features(cfg.model))
    check_eval_settings(cfg.eval, context, cfg.domain)
    results_dir = project_path(cfg.results.dir)
    probe_results_dir(results_dir)
    tokenizer = counting_tokenizer(cfg.model)  # texts are counted as they are read
    evaluated = excluded_texts(plain["domain"], requests, root)
    files = calibration_files(requests, cfg.data.general.calib, cfg.domain.calib, root, tokenizer, seed,
                              evaluated)
    files += check_eval_inputs(cfg.domain, cfg.data.general, root, tokenizer)
    config = cell_config(plain, dense=pruner.name == "dense", sparsity=pruner.sparsity,
                         pattern=str(pruner.pattern), allocation=pruner.allocation.kind,
                         calib=calibration_settings(requests, cfg.calib), unread=pruner.unread_options())
    config["inputs"] = fingerprints(files, root, inputs)
    return ValidatedCell(pruner, requests, root, config, record_key(config), results_dir,
                         plain["data"]["general"]["calib"], plain["domain"]["calib"], seed, inputs, evaluated)


def excluded_texts(domain: Mapping[str, Any], requests: Mapping[str, WindowRequest],
                   root: Path) -> EvaluatedTexts | None:
    """What the domain calibration leaves out: the domain's evaluated texts where
    `domain.calib.exclude_evaluated` is set and a window is drawn from domain texts, else None."""
    reads_domain = any("domain" in request.texts for request in requests.values())
    wanted = domain["calib"].get("exclude_evaluated") and reads_domain
    return evaluated_texts(domain, root) if wanted else None


def check_cache_folders(plain: Mapping[str, Any]) -> None:
    """The cache and scratch folders the run writes into, each a folder (or creatable as one)."""
    check_folder_setting(CACHE_ENV, os.environ.get(CACHE_ENV))
    check_folder_setting("model.cache_dir", plain["model"].get("cache_dir"))
    for key in ("cache_dir", "scratch_dir"):
        check_folder_setting(f"pruner.{key}", plain["pruner"].get(key))


def row_shard_methods() -> list[str]:
    """The registered methods that run on row-sharded weights (their own `row_shards` flag)."""
    return sorted(name for name, cls in REGISTRY.items() if cls.row_shards)
