"""A benchmark's cell built the way run.py builds one: the Hydra config composed from conf/ with
overrides, then `bench.cell.validate`, the function run.py validates and builds its cell with,
so that a benchmark measures what a grid cell runs and can drop none of its settings."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from bench.cell import ValidatedCell, validate
from bench.defaults import compose_config
from core.distributed import World


def bench_cell(overrides: Sequence[str], world: World | None = None) -> tuple[DictConfig, ValidatedCell]:
    """The composed config and the cell run.py would run for it (every file and setting checked)."""
    cfg = compose_config(overrides)
    return cfg, validate(cfg, world)


FOLLOW_UPS = {"dsnot": "pruner.refine=dsnot", "obs": "pruner.reconstruct=general"}


def pruner_overrides(method: str) -> list[str]:
    """Select a method for a timed prune, `+dsnot` / `+obs` adding a refinement / an update on
    general windows (`wanda+dsnot`); D-Pruner's G cache is off, so G is computed and timed."""
    name, *follow = method.split("+")
    unknown = [part for part in follow if part not in FOLLOW_UPS]
    if unknown:
        raise SystemExit(f"error: {method!r}: after + give one of {sorted(FOLLOW_UPS)}")
    return [f"pruner={name}", *(["pruner.cache_dir=null"] if name == "dpruner" else []),
            *(FOLLOW_UPS[part] for part in follow)]
