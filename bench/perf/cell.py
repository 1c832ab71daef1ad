"""A benchmark's cell built the way run.py builds one: the Hydra config composed from conf/ with
overrides, the pruner through `pruners.from_config`, its calibration windows through the
pruner's own requests, so that a benchmark measures what a grid cell runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from core.calibration import Calibration, WindowRequest, build_calibration
from core.data import resolve_data_root
from core.paths import CONF_DIR
from pruners import Pruner, from_config


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """conf/config.yaml with command-line style overrides (`pruner=wanda`, `calib.nsamples=8`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def pruner_overrides(method: str) -> list[str]:
    """Select a method for a timed prune: D-Pruner's G cache is off, so G is computed and timed."""
    return [f"pruner={method}", *(["pruner.cache_dir=null"] if method == "dpruner" else [])]


def build_pruner(cfg: DictConfig, **options: Any) -> Pruner:
    """The cell's pruner; `options` replace the pruner config's own (an ablation's changes)."""
    pruner_cfg = OmegaConf.to_container(cfg.pruner, resolve=True)
    pruner_cfg.update(options)
    return from_config(pruner_cfg, sparsity=cfg.sparsity, pattern=cfg.pattern,
                       driver=OmegaConf.to_container(cfg.driver, resolve=True))


def calibration(cfg: DictConfig, requests: Mapping[str, WindowRequest], tokenizer: Any) -> Calibration:
    """The requested windows, drawn from the cell's data with its seed."""
    return build_calibration(requests, tokenizer, cfg.data.general.calib, cfg.domain.calib,
                             resolve_data_root(cfg.data.root), int(cfg.seed))
