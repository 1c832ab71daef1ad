"""What may follow a method's mask, for every mask method alike: a refinement of the mask
(`pruner.refine=dsnot`) and an update of the kept weights (`pruner.reconstruct=<source>`).

A pruning method makes two choices: which weights to drop and what to do with the ones it keeps.
Magnitude, Wanda, RIA and D-Pruner choose only the mask; SparseGPT chooses and updates together.
Here the two are independent settings:

1. the method's own mask, exactly as `pruner=<name>` alone gives it;
2. `refine=dsnot`: a layer-by-layer pass over the `calib` group's windows that starts each matrix
   from that mask and the dense weights, and swaps kept and pruned weights per output row
   (pruners/dsnot.py); the next layer sees the refined layer's outputs;
3. `reconstruct=general|mixed|domain`: a layer-by-layer pass over windows of that source that
   keeps every mask fixed and gives the kept weights SparseGPT's OBS compensation
   (`sparsegpt_prune(..., mask=keep)`), from the dense weights.

Both passes start from the dense weights, so the model's weights are copied (to CPU memory)
before the method runs. Each matrix's update notes carry the layer-output error before and after
the update, over every calibration token: tr((W - W') H (W - W')^T) / tr(W H W^T)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from core.checks import as_float, choice
from core.memory import peak_memory_mb
from core.structure import model_linears
from pruners.driver import LayerPass, run_layerwise
from pruners.dsnot import DSnoTSettings, InputMoments, dsnot_options, dsnot_refine
from pruners.hessian import Hessian
from pruners.obs import sparsegpt_prune
from pruners.pattern import Pattern
from pruners.settings import DriverSettings, MatrixReport

RECONSTRUCT = ("none", "general", "mixed", "domain")
REFINE = ("none", "dsnot")
KeepOf = Callable[[str], torch.Tensor]  # matrix name -> its bool keep-mask
Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FollowUp:
    """The refinement and the update that follow a mask (`pruner.refine`, `pruner.reconstruct`),
    with the update's Hessian dampening and DSnoT's own settings (`pruner.dsnot.*`)."""

    reconstruct: str = "none"
    refine: str = "none"
    percdamp: float = 0.01  # the update's Hessian dampening, as SparseGPT's
    dsnot: DSnoTSettings = field(default_factory=DSnoTSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reconstruct", choice("pruner.reconstruct", self.reconstruct, RECONSTRUCT))
        object.__setattr__(self, "refine", choice("pruner.refine", self.refine, REFINE))
        object.__setattr__(self, "percdamp", as_float("pruner.percdamp", self.percdamp, 0.0, 1.0,
                                                      open_low=True, open_high=True))
        object.__setattr__(self, "dsnot", dsnot_options(self.dsnot))

    @property
    def active(self) -> bool:
        """Whether anything follows the mask (the dense weights must then be kept)."""
        return self.reconstruct != "none" or self.refine != "none"


def output_error(weight: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """||W X - W' X||^2 / ||W X||^2 over all calibration tokens, from H (its scale cancels)."""
    W, H = weight.double(), hessian.double()
    D = W - new.double()
    return float(((D @ H) * D).sum() / ((W @ H) * W).sum().clamp_min(1e-300))


class FixedMaskUpdate(LayerPass):
    """Driver pass: each matrix keeps exactly `keep_of(name)`; the kept weights get SparseGPT's
    OBS compensation."""

    def __init__(self, keep_of: KeepOf, percdamp: float) -> None:
        self.keep_of = keep_of
        self.percdamp = percdamp

    def make_stats(self, columns: int, device: torch.device) -> Hessian:
        return Hessian(columns, device)

    def finish_matrix(self, name: str, weight: torch.Tensor, stats: Hessian) -> tuple[torch.Tensor, dict]:
        keep = self.keep_of(name).to(weight.device)
        H = stats.matrix()
        new, notes = sparsegpt_prune(weight, H, 0.0, percdamp=self.percdamp, mask=keep)
        notes["error_masked"] = output_error(weight, weight.float() * keep, H)
        notes["error_reconstructed"] = output_error(weight, new, H)
        return new, notes


class DSnoTRefinement(LayerPass):
    """Driver pass: each matrix starts from its mask in `masks` and the dense weight, DSnoT
    refines the mask from the layer's input moments (the matrices of `skip_layer` keep theirs);
    `masks` is updated to the refined masks."""

    def __init__(self, masks: Weights, settings: DSnoTSettings, pattern: Pattern) -> None:
        self.masks = masks
        self.settings = settings
        self.pattern = pattern

    def make_stats(self, columns: int, device: torch.device) -> InputMoments:
        return InputMoments(columns, device)

    def finish_matrix(self, name: str, weight: torch.Tensor,
                      stats: InputMoments) -> tuple[torch.Tensor, dict]:
        keep, notes = self.masks[name].to(weight.device), {"refined": False}
        if self.settings.applies_to(name):
            keep, notes = dsnot_refine(weight, keep, stats, pattern=self.pattern,
                                       **self.settings.refine_options())
            notes["refined"] = True
            self.masks[name] = keep.cpu()
        return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype)), notes


def update_kept_weights(model: nn.Module, ids: torch.Tensor, keep_of: KeepOf, percdamp: float,
                        driver: DriverSettings, device: torch.device) -> list[MatrixReport]:
    """Prune the dense `model` to the masks `keep_of` gives, compensating the kept weights layer
    by layer on `ids`; returns the driver's per-matrix reports."""
    method = FixedMaskUpdate(keep_of, percdamp)
    return run_layerwise(model, ids, method, driver, device, label="obs update")


def refine_masks(model: nn.Module, ids: torch.Tensor, masks: Weights, settings: DSnoTSettings,
                 pattern: Pattern, driver: DriverSettings, device: torch.device) -> list[MatrixReport]:
    """Refine `masks` in place with DSnoT, pruning the dense `model` to them layer by layer."""
    method = DSnoTRefinement(masks, settings, pattern)
    return run_layerwise(model, ids, method, driver, device, label="dsnot")


@torch.no_grad()
def dense_weights(model: nn.Module) -> Weights:
    """A CPU copy of every prunable weight, for the passes that start again from the dense model."""
    linears = model_linears(model)
    return {name: linear.weight.detach().to("cpu", copy=True) for name, linear in linears.items()}


@torch.no_grad()
def restore(model: nn.Module, dense: Weights) -> None:
    for name, linear in model_linears(model).items():
        linear.weight.data.copy_(dense[name].to(linear.weight.device))


def merge_notes(final: list[MatrixReport], *earlier: list[MatrixReport]) -> list[MatrixReport]:
    """The last pass's reports (its weights are the model's), with every earlier pass's notes and
    seconds added per matrix."""
    by_name = {report.name: report for report in final}
    for reports in earlier:
        for report in reports:
            if report.name in by_name:
                by_name[report.name].notes = {**report.notes, **by_name[report.name].notes}
                by_name[report.name].seconds += report.seconds
    return final


def follow_mask(model: nn.Module, follow: FollowUp, pattern: Pattern, masks: Weights, dense: Weights,
                windows: Mapping[str, torch.Tensor | None], driver: DriverSettings,
                device: torch.device, stages: dict[str, dict[str, float]]) -> list[list[MatrixReport]]:
    """Refine and/or update after the method's masks were chosen (`masks`: every matrix's keep,
    `dense`: the original weights). `windows`: `ids` (the calib group's, for the refinement) and
    `reconstruct` (the update's). Adds each pass's seconds to `stages`; returns its reports."""
    passes: list[list[MatrixReport]] = []
    if follow.refine == "dsnot":
        start = time.perf_counter()
        restore(model, dense)
        passes.append(refine_masks(model, windows["ids"], masks, follow.dsnot, pattern, driver, device))
        stages["refine"] = {"seconds": time.perf_counter() - start, "peak_mb": peak_memory_mb(device)}
    if follow.reconstruct != "none":
        start = time.perf_counter()
        restore(model, dense)
        passes.append(update_kept_weights(model, windows["reconstruct"], masks.__getitem__, follow.percdamp,
                                          driver, device))
        stages["reconstruct"] = {"seconds": time.perf_counter() - start, "peak_mb": peak_memory_mb(device)}
    return passes
