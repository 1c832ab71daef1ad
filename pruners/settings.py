"""What a pruning run reports and how the layer-by-layer driver runs: the value types the
driver, the methods and the allocation sweep all share (kept apart from the Pruner base so that
none of them imports it)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from core.checks import as_bool, as_int, choice
from core.errors import ConfigError
from core.memory import peak_memory_mb


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
