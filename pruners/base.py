"""What every pruning method shares: argument validation, the registry, the per-matrix report,
and the rule for which modules are pruned (every nn.Linear inside the decoder blocks)."""

from __future__ import annotations

import ctypes
import resource
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from core.errors import ConfigError
from pruners.masks import check_sparsity, parse_pattern, pattern_sparsity

REGISTRY: dict[str, type[Pruner]] = {}


def register(name: str):
    """Class decorator: make a method available as `pruner=<name>`."""

    def wrap(cls: type[Pruner]) -> type[Pruner]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def build(name: str, **options: Any) -> Pruner:
    if name not in REGISTRY:
        raise ConfigError(f"unknown pruner {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name](**options)


@dataclass
class Calibration:
    """Token windows [n, seqlen]. `ids` is the baselines' set (chosen by `calib=`); D-Pruner
    uses `general` for its general importance and `domain` for its domain importance."""

    ids: torch.Tensor | None = None
    general: torch.Tensor | None = None
    domain: torch.Tensor | None = None


@dataclass
class MatrixReport:
    name: str
    shape: tuple[int, int]
    sparsity: float
    error: float | None  # ||WX - W'X||^2 / ||WX||^2 on the first calibration tokens
    seconds: float
    peak_mem_mb: float
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriverSettings:
    """How the layer-by-layer driver runs (not what a method computes)."""

    propagate: str = "pruned"  # next layer sees the pruned ("pruned") or dense ("dense") outputs
    batch_size: int = 8  # calibration windows pushed through a layer at once
    error_tokens: int = 1024  # tokens of the first batch used for the reconstruction error
    offload: bool = False  # keep the model on CPU and move one layer at a time to `device`
    progress: bool = True

    def __post_init__(self) -> None:
        if self.propagate not in ("pruned", "dense"):
            raise ConfigError(f"driver.propagate={self.propagate!r}; choose 'pruned' or 'dense'")
        if int(self.batch_size) < 1:
            raise ConfigError(f"driver.batch_size={self.batch_size!r} must be >= 1")


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak resident memory of this process (CPU) or peak allocated memory (CUDA), in MiB."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def free_large_blocks_at_once(threshold_bytes: int = 1 << 18) -> bool:
    """Serve CPU allocations of at least `threshold_bytes` by mmap, so that freeing one gives
    its memory back to the system at once. glibc otherwise raises that threshold after the first
    large free and recycles later large blocks from a heap that fragments: a stream of freshly
    allocated and freed per-matrix tensors (D-Pruner's gradients) then keeps hundreds of MiB
    resident that nothing uses. Returns whether the setting took (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the ModuleList holding the most parameters."""
    best, best_size = None, -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = module, size
    if best is None:
        raise ConfigError(f"{type(model).__name__} has no stack of decoder layers to prune")
    return best


def prunable_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside one decoder block, by its name within the block."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


def model_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable nn.Linear of the model, named `layers.<i>.<name>`."""
    found = {
        f"layers.{i}.{name}": linear
        for i, layer in enumerate(decoder_layers(model))
        for name, linear in prunable_linears(layer).items()
    }
    if not found:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear inside its decoder layers "
                          "(e.g. GPT-2's Conv1D); such models are not supported")
    return found


class Pruner:
    """Base of every method. Subclasses set `needs` (which calibration sets they use) and
    implement `prune`, which changes the model in place and returns one report per matrix."""

    name: ClassVar[str] = "base"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured",
                 driver: Mapping[str, Any] | DriverSettings | None = None) -> None:
        self.sparsity = check_sparsity(sparsity)
        self.pattern = str(pattern)
        parse_pattern(self.pattern)
        if isinstance(driver, DriverSettings):
            self.driver = driver
        else:
            self.driver = DriverSettings(**dict(driver or {}))

    @property
    def target_sparsity(self) -> float:
        return pattern_sparsity(self.pattern, self.sparsity)

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        raise NotImplementedError


def sparsity_summary(model: nn.Module) -> dict[str, Any]:
    """Fractions of zeros: over the prunable matrices, over all parameters, and per matrix."""
    per_matrix = {}
    zeros = total = 0
    for name, linear in model_linears(model).items():
        z = int((linear.weight == 0).sum())
        per_matrix[name] = z / linear.weight.numel()
        zeros += z
        total += linear.weight.numel()
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    all_total = sum(p.numel() for p in model.parameters())
    return {
        "achieved": zeros / max(total, 1),
        "model": all_zeros / max(all_total, 1),
        "per_matrix": per_matrix,
    }
