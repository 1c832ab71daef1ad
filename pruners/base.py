"""What every pruning method shares: the base class with its validated target, the per-matrix
report, the driver settings, and the registry through which a method is built from its config."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from hydra.utils import get_class
from torch import nn

from core.calibration import Calibration, WindowRequest
from core.checks import as_bool, as_int, choice
from core.errors import ConfigError
from core.memory import peak_memory_mb
from pruners.pattern import Pattern, check_sparsity

REGISTRY: dict[str, type[Pruner]] = {}


def register(name: str):
    """Class decorator: make a method available as `pruner=<name>`."""

    def wrap(cls: type[Pruner]) -> type[Pruner]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


@dataclass
class MatrixReport:
    """What pruning one matrix cost and did (its achieved sparsity is in the record's summary)."""

    name: str
    shape: tuple[int, int]
    error: float | None  # ||WX - W'X||^2 / ||WX||^2 on the first calibration tokens
    seconds: float
    peak_mem_mb: float
    notes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def since(cls, start: float, name: str, weight: torch.Tensor, error: float | None = None,
              notes: dict[str, Any] | None = None) -> MatrixReport:
        """A report for work on `weight` that began at `start` (time.perf_counter())."""
        return cls(name, tuple(weight.shape), error, time.perf_counter() - start,
                   peak_memory_mb(weight.device), dict(notes or {}))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriverSettings:
    """How the layer-by-layer driver runs (not what a method computes)."""

    propagate: str = "pruned"  # next layer sees the pruned ("pruned") or dense ("dense") outputs
    batch_size: int = 8  # calibration windows pushed through a layer at once
    error_tokens: int = 1024  # tokens of the first batch used for the reconstruction error
    offload: bool = False  # keep the model on CPU and move one layer at a time to `device`
    progress: bool = True

    def __post_init__(self) -> None:
        choice("driver.propagate", self.propagate, ("pruned", "dense"))
        object.__setattr__(self, "batch_size", as_int("driver.batch_size", self.batch_size, 1))
        object.__setattr__(self, "error_tokens", as_int("driver.error_tokens", self.error_tokens, 1))
        as_bool("driver.offload", self.offload)
        as_bool("driver.progress", self.progress)

    @classmethod
    def of(cls, driver: Mapping[str, Any] | DriverSettings | None) -> DriverSettings:
        if isinstance(driver, DriverSettings):
            return driver
        try:
            return cls(**dict(driver or {}))
        except TypeError as err:
            raise ConfigError(f"driver: {err}") from err


class Pruner:
    """Base of every method. A subclass says which calibration windows it reads
    (`calibration_requests`) and implements `prune`, which changes the model in place and
    returns one report per pruned matrix."""

    name: ClassVar[str] = "base"
    calibrated: ClassVar[bool] = False  # reads the `calib` group's windows as `calibration.ids`

    def __init__(self, sparsity: float = 0.5, pattern: str | Pattern = "unstructured",
                 driver: Mapping[str, Any] | DriverSettings | None = None) -> None:
        self.pattern = Pattern.parse(pattern)
        self.sparsity = self.pattern.sparsity(check_sparsity(sparsity))
        self.driver = DriverSettings.of(driver)
        self.stages: dict[str, dict[str, float]] = {}  # after prune: seconds and peak memory per stage

    def calibration_requests(self, calib: Mapping[str, Any]) -> dict[str, WindowRequest]:
        """The windows `prune` reads, by `Calibration` slot."""
        return {"ids": WindowRequest.from_calib(calib)} if self.calibrated else {}

    def prune(self, model: nn.Module, calibration: Calibration,
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
