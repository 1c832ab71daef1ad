"""What every pruning method shares: the base class with its validated target and layer
allocation, and the registry through which a method is built from its config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from hydra.utils import get_class
from torch import nn

from core.calibration import Calibration, WindowRequest, calibration_budget
from core.distributed import World
from core.errors import ConfigError
from core.row_shards import gather_to_leader
from pruners.allocation import Allocation, LayerSparsities, allocate
from pruners.driver import LayerPass, run_layerwise
from pruners.mask_update import FollowUp, dense_weights, follow_mask, merge_notes
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
    returns one report per pruned matrix, asking `sparsity_of` for each matrix's sparsity and
    applying each mask through `keep_weights`; `prune` first decides every layer's sparsity (the
    cell's `allocation`, pruners/allocation.py) and afterwards runs what follows the masks
    (`pruner.refine`, `pruner.reconstruct`: pruners/mask_update.py)."""

    name: ClassVar[str] = "base"
    calibrated: ClassVar[bool] = False  # reads the `calib` group's windows as `calibration.ids`
    row_shards: ClassVar[bool] = False  # runs on row-sharded weights (model.shard_rows), gathering them
    moves_whole_model: ClassVar[bool] = False  # a pass over the whole model at once: no model.device_map
    updates_kept_weights: ClassVar[bool] = False  # mask and update are one choice (SparseGPT)
    mask_reads_percdamp: ClassVar[bool] = False  # `percdamp` matters without `reconstruct` too

    def __init__(self, sparsity: float = 0.5, pattern: str | Pattern = "unstructured",
                 driver: Mapping[str, Any] | DriverSettings | None = None,
                 allocation: Allocation | None = None, *, reconstruct: str = "none", refine: str = "none",
                 percdamp: float = 0.01, dsnot: Mapping[str, Any] | None = None) -> None:
        self.pattern = Pattern.parse(pattern)
        self.sparsity = self.pattern.sparsity(check_sparsity(sparsity))
        self.driver = DriverSettings.of(driver)
        self.allocation = allocation or Allocation()
        self.allocation.check(self.sparsity, self.pattern)
        self.follow = FollowUp(reconstruct, refine, percdamp, dsnot)
        if self.updates_kept_weights and self.follow.active:
            setting = (f"pruner.reconstruct={reconstruct}" if reconstruct != "none"
                       else f"pruner.refine={refine}")
            raise ConfigError(f"{setting}: {self.name} chooses its mask and updates the kept weights in "
                              "one step; refine and reconstruct follow the masks of magnitude, wanda, ria "
                              "and dpruner")
        self.layers = LayerSparsities(self.allocation, self.sparsity)  # decided again by `prune`
        self.stages: dict[str, dict[str, float]] = {}  # after prune: seconds and peak memory per stage
        self.masks: dict[str, torch.Tensor] = {}  # while pruning with a follow-up: each matrix's keep
        self.dense: dict[str, torch.Tensor] | None = None  # while pruning with a follow-up: CPU dense copy
        self.resume_folder: Path | None = None  # where a resumable pass saves its progress (set by the run)
        self.resumed: dict[str, Any] | None = None  # after prune: where it resumed and what came before

    def calibration_requests(self, calib: Mapping[str, Any]) -> dict[str, WindowRequest]:
        """The windows `prune` reads, by `Calibration` slot: the `calib` group's as `ids` for the
        method itself, OWL's outlier ratios and the refinement; the update's as `reconstruct` (the
        calib group's sizes from the `reconstruct` source, as SparseGPT with calib=<source>)."""
        requests = {}
        if self.calibrated or self.allocation.owl or self.follow.refine != "none":
            requests["ids"] = WindowRequest.from_calib(calib)
        source = self.follow.reconstruct
        if source != "none":
            keys = ("nsamples", "seqlen", "mix") if source == "mixed" else ("nsamples", "seqlen")
            requests["reconstruct"] = replace(WindowRequest.from_calib(calib), source=source, calib_keys=keys)
        return requests

    def calibration_source(self, requests: Mapping[str, WindowRequest]) -> str | None:
        """The source of the `calib` group's windows the cell reads: the leaderboard's calibration
        axis (None: it reads none of them); the update's where the method reads none itself."""
        for slot in ("ids", "reconstruct"):
            if slot in requests:
                return requests[slot].source
        return None

    def unread_options(self) -> tuple[str, ...]:
        """Options this cell does not read, left out of its record key: the update's dampening
        without an update, unless the method's own mask reads it (records from before the option
        existed keep their keys)."""
        needless = self.follow.reconstruct == "none" and not self.mask_reads_percdamp
        return ("percdamp",) if needless else ()

    def describe(self) -> dict[str, str]:
        """The record's names for the cell's three choices: mask, refinement and update."""
        update = "joint" if self.updates_kept_weights else self.follow.reconstruct
        return {"mask": self.name, "refine": self.follow.refine,
                "update": update if update in ("none", "joint") else f"obs({update})"}

    def calibration_passes(self, requests: Mapping[str, WindowRequest]) -> dict[str, int]:
        """How many times each source's windows run through the model: once where read, 0 where
        not (a method that iterates over its windows says how often); the refinement runs the
        `ids` windows once more, and so does the update where its windows are those same ones."""
        read = {text for request in requests.values() for text in request.texts}
        passes = {source: int(source in read) for source in ("general", "domain")}
        again = [requests["ids"]] if self.follow.refine != "none" else []
        update = requests.get("reconstruct")
        if update is not None and any(_same_windows(update, other) for slot, other in requests.items()
                                      if slot != "reconstruct"):
            again.append(update)
        for request in again:
            for source in request.texts:
                passes[source] += 1
        return passes

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

    def remember(self, name: str, keep: torch.Tensor) -> None:
        """Keep the whole matrix's mask when a refinement or an update follows it."""
        if self.follow.active:
            self.masks[name] = keep.detach().to("cpu", torch.bool, copy=True)

    def keep_weights(self, name: str, weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`weight` with the mask `keep` (the whole matrix's) applied, the mask remembered."""
        self.remember(name, keep)
        return torch.where(keep.to(weight.device), weight, torch.zeros((), dtype=weight.dtype))

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        self.layers = allocate(model, calibration.ids, self.allocation, self.sparsity, self.driver, device)
        self.dense = dense_weights(model) if self.follow.active else None  # a method may read it too
        self.masks = {}
        reports = self.prune_model(model, calibration, device)
        if self.dense is not None:
            windows = {slot: calibration.get(slot) for slot in ("ids", "reconstruct")}
            passes = follow_mask(model, self.follow, self.pattern, self.masks, self.dense, windows,
                                 self.driver, device, self.stages)
            reports = merge_notes(passes[-1], reports, *passes[:-1])
            self.masks, self.dense = {}, None
        if self.row_shards:
            gather_to_leader(model)  # row-sharded weights: rank 0 evaluates the whole pruned model
        return reports

    def prune_model(self, model: nn.Module, calibration: Calibration,
                    device: torch.device) -> list[MatrixReport]:
        raise NotImplementedError


class LayerwisePruner(Pruner, LayerPass):
    """A method that sets each matrix's mask from statistics of its inputs on the `ids` windows
    (`make_stats`, `finish_matrix`): one pass of the shared layer-by-layer driver."""

    calibrated = True

    def prune_model(self, model: nn.Module, calibration: Calibration,
                    device: torch.device) -> list[MatrixReport]:
        return run_layerwise(model, calibration.ids, self, self.driver, device, label=self.name)


def _same_windows(a: WindowRequest, b: WindowRequest) -> bool:
    """Two requests that draw the same windows (source, sizes, the mix of mixed ones; one seed
    per cell)."""
    def drawn(r: WindowRequest) -> tuple:
        return r.source, r.nsamples, r.seqlen, r.windows, r.mix if r.source == "mixed" else None

    return drawn(a) == drawn(b)


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
