"""D-Pruner's options, validated once into a frozen value that every pass reads (no pass holds
the pruner itself)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.checks import as_bool, as_float, as_int, choice
from core.errors import ConfigError

IMPORTANCE = ("dual", "general_only", "domain_only")
REGULARIZERS = ("paper", "anchor")
REGULARIZER_GRADS = ("fisher", "exact", "none")
CLIPS = ("lagged", "two_pass")
SCRATCH = ("auto", "memory", "disk")
DOMAIN_CALIB = {"nsamples": 32, "seqlen": 256, "windows": "random", "sources": None}
WINDOWS = ("random", "whole_examples")


def _folder(value: str | None) -> Path | None:
    return Path(os.path.expanduser(str(value))) if value else None


def _domain_calib(given: Mapping[str, Any]) -> dict[str, Any]:
    """pruner.domain_calib: window sizes, how windows are cut (random windows of the joined texts,
    or one whole example each, where nsamples null means every example), and which domain.calib
    sources they read ({name: item limit or null}; null: every source as the domain configures it)."""
    unknown = sorted(set(given) - set(DOMAIN_CALIB))
    if unknown:
        raise ConfigError(f"pruner.domain_calib.{unknown[0]} is not a setting; choose among "
                          f"{', '.join(DOMAIN_CALIB)}")
    value = {**DOMAIN_CALIB, **given}
    windows = choice("pruner.domain_calib.windows", value["windows"], WINDOWS)
    nsamples = value["nsamples"]
    if nsamples is not None or windows == "random":
        nsamples = as_int("pruner.domain_calib.nsamples", nsamples, 1)
    sources = value["sources"]
    if sources is not None:
        if not isinstance(sources, Mapping) or not sources:
            raise ConfigError(f"pruner.domain_calib.sources={sources!r}; give a mapping of domain.calib "
                              "source names to item limits (null: all of that source), or null for all")
        where = "pruner.domain_calib.sources"
        sources = {str(name): None if limit is None else as_int(f"{where}.{name}", limit, 1)
                   for name, limit in sources.items()}
    return {"nsamples": nsamples, "seqlen": as_int("pruner.domain_calib.seqlen", value["seqlen"], 1),
            "windows": windows, "sources": sources}


@dataclass(frozen=True)
class DPrunerOptions:
    importance: str = "dual"  # dual | general_only (rank G) | domain_only (no regulariser)
    lambda_: float = 0.1  # regulariser weight
    lr: float = 3e-2  # alpha: the SGD step size and the alpha of the regulariser
    regularizer: str = "paper"  # paper: lambda alpha^2 sum G g^2 | anchor: lambda sum G^ (w - w0)^2
    regularizer_grad: str = "fisher"  # paper form's gradient: fisher | exact | none
    update_weights: bool = True  # follow SGD steps while scoring (false: the frozen model, one epoch)
    epochs: int = 1
    batch_size: int = 4  # domain windows per backward
    warmup_ratio: float = 0.1  # linear warm-up over this fraction of the steps, then linear decay
    max_grad_norm: float | None = 1.0  # clip of the refined gradient's global norm (None: no clip)
    clip: str = "lagged"  # lagged: previous step's norm (one backward) | two_pass: this step's (two)
    blocking: bool = False  # compare I within column blocks instead of the whole matrix
    block_size: int = 128
    percdamp: float = 0.01  # Hessian dampening of G and of the update (pruner.reconstruct), as SparseGPT
    gradient_checkpointing: bool = True
    loss_chunk: int | None = 64  # output-layer tokens at a time (None: the model's own loss)
    buffers_on_cpu: bool = False  # I (and G in memory) on the CPU while the model is on the accelerator
    return_freed_memory: bool = False  # CPU: freed large blocks go back to the system at once (lower
    # peak RSS, slower domain pass)
    scratch: str = "auto"  # where G and the dense copy live: memory | disk | auto (disk on a CPU)
    scratch_dir: Path | None = None  # disk scratch folder (None: the system temp dir)
    cache_dir: Path | None = None  # G cached by model weights + general windows (None: off)
    resume_minutes: float | None = 10.0  # save the domain pass this often, to resume it (None: never)
    domain_calib: Mapping[str, Any] = field(default_factory=lambda: dict(DOMAIN_CALIB))

    def __post_init__(self) -> None:
        values: dict[str, Any] = {
            "importance": choice("pruner.importance", self.importance, IMPORTANCE),
            "regularizer": choice("pruner.regularizer", self.regularizer, REGULARIZERS),
            "regularizer_grad": choice("pruner.regularizer_grad", self.regularizer_grad, REGULARIZER_GRADS),
            "clip": choice("pruner.clip", self.clip, CLIPS),
            "scratch": choice("pruner.scratch", self.scratch, SCRATCH),
            "lambda_": as_float("pruner.lambda_", self.lambda_, 0.0),
            "lr": as_float("pruner.lr", self.lr, 0.0, open_low=True),
            "epochs": as_int("pruner.epochs", self.epochs, 1),
            "batch_size": as_int("pruner.batch_size", self.batch_size, 1),
            "block_size": as_int("pruner.block_size", self.block_size, 1),
            "warmup_ratio": as_float("pruner.warmup_ratio", self.warmup_ratio, 0.0, 1.0, open_high=True),
            "percdamp": as_float("pruner.percdamp", self.percdamp, 0.0, 1.0, open_low=True, open_high=True),
            "max_grad_norm": None if self.max_grad_norm is None
            else as_float("pruner.max_grad_norm", self.max_grad_norm, 0.0, open_low=True),
            "resume_minutes": None if self.resume_minutes is None
            else as_float("pruner.resume_minutes", self.resume_minutes, 0.0),
            "loss_chunk": None if self.loss_chunk is None
            else as_int("pruner.loss_chunk", self.loss_chunk, 1),
            **{flag: as_bool(f"pruner.{flag}", getattr(self, flag))
               for flag in ("update_weights", "blocking", "gradient_checkpointing", "buffers_on_cpu",
                            "return_freed_memory")},
            "scratch_dir": _folder(self.scratch_dir), "cache_dir": _folder(self.cache_dir),
            "domain_calib": _domain_calib(dict(self.domain_calib or {})),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def regularized(self) -> bool:
        """Whether the domain gradient carries a regulariser term at all."""
        return self.importance == "dual" and self.regularizer_grad != "none" and self.lambda_ > 0

    @property
    def needs_general(self) -> bool:
        return self.importance == "general_only" or self.regularized

    @property
    def needs_domain(self) -> bool:
        return self.importance != "general_only"

    @property
    def exact(self) -> bool:
        """The paper form's regulariser gradient by double backward (a Hessian-vector product)."""
        return self.regularized and self.regularizer == "paper" and self.regularizer_grad == "exact"

    @property
    def whole_examples(self) -> bool:
        """Domain windows of one rendered example each (padded per batch), not random windows."""
        return self.domain_calib["windows"] == "whole_examples"

    def steps(self, windows: int) -> int:
        """Backward steps over `windows` domain windows; frozen weights take one epoch, since more
        would only repeat the same gradients."""
        per_epoch = math.ceil(windows / self.batch_size)
        return per_epoch * (self.epochs if self.update_weights else 1)

    def returns_freed_memory(self, device: torch.device, store: torch.device) -> bool:
        """Whether the domain pass asks the CPU allocator to give large freed blocks back at once
        (only CPU memory is concerned: the model's device or where I lives)."""
        return self.return_freed_memory and "cpu" in (device.type, store.type)

    def on_disk(self, device: torch.device) -> bool:
        """G and the dense copy in scratch files (`auto`: when pruning on a CPU, where memory is
        the scarce thing)."""
        return self.scratch == "disk" or (self.scratch == "auto" and device.type == "cpu")
