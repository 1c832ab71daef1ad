"""What every pruning method shares: the base class with its validated target and layer
allocation, and the registry through which a method is built from its config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from hydra.utils import get_class
from torch import nn

from core.calibration import Calibration, WindowRequest, calibration_budget
from core.distributed import World
from core.errors import ConfigError
from core.row_shards import gather_to_leader
from pruners.allocation import Allocation, LayerSparsities, allocate
from pruners.pattern import Pattern, check_sparsity
from pruners.settings import DriverSettings, MatrixReport

REGISTRY: dict[str, type[Pruner]] = {}


def register(name: str):
    """Class decorator: make a method available as `pruner=<name>`."""

    def wrap(cls: type[Pruner]) -> type[Pruner]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


class Pruner:
    """Base of every method. A subclass says which calibration windows it reads
    (`calibration_requests`) and implements `prune_model`, which changes the model in place and
    returns one report per pruned matrix, asking `sparsity_of` for each matrix's sparsity; `prune`
    first decides every layer's sparsity (the cell's `allocation`, pruners/allocation.py)."""

    name: ClassVar[str] = "base"
    calibrated: ClassVar[bool] = False  # reads the `calib` group's windows as `calibration.ids`
    row_shards: ClassVar[bool] = False  # runs on row-sharded weights (model.shard_rows), gathering them
    moves_whole_model: ClassVar[bool] = False  # a pass over the whole model at once: no model.device_map

    def __init__(self, sparsity: float = 0.5, pattern: str | Pattern = "unstructured",
                 driver: Mapping[str, Any] | DriverSettings | None = None,
                 allocation: Allocation | None = None) -> None:
        self.pattern = Pattern.parse(pattern)
        self.sparsity = self.pattern.sparsity(check_sparsity(sparsity))
        self.driver = DriverSettings.of(driver)
        self.allocation = allocation or Allocation()
        self.allocation.check(self.sparsity, self.pattern)
        self.layers = LayerSparsities(self.allocation, self.sparsity)  # decided again by `prune`
        self.stages: dict[str, dict[str, float]] = {}  # after prune: seconds and peak memory per stage

    def calibration_requests(self, calib: Mapping[str, Any]) -> dict[str, WindowRequest]:
        """The windows `prune` reads, by `Calibration` slot (OWL's outlier ratios read `ids`)."""
        needed = self.calibrated or self.allocation.owl
        return {"ids": WindowRequest.from_calib(calib)} if needed else {}

    def calibration_source(self, requests: Mapping[str, WindowRequest]) -> str | None:
        """The source of the `calib` group's windows the cell reads: the leaderboard's calibration
        axis (None: it reads none of them)."""
        return requests["ids"].source if "ids" in requests else None

    def calibration_passes(self, requests: Mapping[str, WindowRequest]) -> dict[str, int]:
        """How many times each source's windows run through the model: once where read, 0 where
        not (a method that iterates over its windows says how often)."""
        read = {text for request in requests.values() for text in request.texts}
        return {source: int(source in read) for source in ("general", "domain")}

    def optimizer_steps(self, windows: Mapping[str, Mapping[str, Any]]) -> int | None:
        """The optimizer steps pruning takes over the windows counted per slot (`windows` of
        calibration_budget: the drawn ones where known); None: a method that takes none."""
        return None

    def budget(self, requests: Mapping[str, WindowRequest],
               calibration: Calibration | None = None) -> dict[str, Any]:
        """What the cell's calibration consumes (core.calibration.calibration_budget, from the drawn
        windows when given) with this method's passes and optimizer steps: the record's `budget`."""
        counted = calibration_budget(requests, calibration)
        return {**counted, "passes": self.calibration_passes(requests),
                "optimizer_steps": self.optimizer_steps(counted["windows"])}

    def check_world(self, world: World) -> None:
        """Settings that must suit the cell's processes (checked before the model loads)."""

    def sparsity_of(self, name: str) -> float:
        """The sparsity of the matrix `layers.<i>.<...>`: the target, or its layer's OWL share."""
        return self.layers.of(name)

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        self.layers = allocate(model, calibration.ids, self.allocation, self.sparsity, self.driver, device)
        reports = self.prune_model(model, calibration, device)
        if self.row_shards:
            gather_to_leader(model)  # row-sharded weights: rank 0 evaluates the whole pruned model
        return reports

    def prune_model(self, model: nn.Module, calibration: Calibration,
                    device: torch.device) -> list[MatrixReport]:
        raise NotImplementedError


def build(name: str, **options: Any) -> Pruner:
    """The one way a pruner is made: by registered name, every option validated by its
    constructor; unknown names and options are ConfigErrors."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown pruner {name!r}; choose one of {sorted(REGISTRY)}")
    try:
        return REGISTRY[name](**options)
    except TypeError as err:
        raise ConfigError(f"pruner {name}: {err}") from err


def from_config(pruner_cfg: Mapping[str, Any], **common: Any) -> Pruner:
    """Build the method a `conf/pruner/*.yaml` names by `_target_`, with `common` (sparsity,
    pattern, driver) added to its own options."""
    options = dict(pruner_cfg)
    target = options.pop("_target_", None)
    cls = get_class(target) if target else None
    name = getattr(cls, "name", None)
    if name not in REGISTRY or REGISTRY[name] is not cls:
        raise ConfigError(f"pruner._target_={target!r} is not a registered method; "
                          f"choose one of {sorted(REGISTRY)}")
    return build(name, **options, **common)
