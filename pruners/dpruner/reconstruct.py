"""D-Pruner with weight reconstruction (`pruner.reconstruct=general|mixed`).

D-Pruner chooses which weights to keep but leaves the kept ones as they were; SparseGPT also
moves the kept weights so that each layer's output on calibration text changes as little as
possible (its OBS update). Reconstruction gives D-Pruner's mask that same update: one pass of the
shared layer-by-layer driver over the general (or general + domain) calibration windows, each
matrix's Hessian H = 2XX^T/n from the layer's inputs in the model pruned so far, and SparseGPT's
update under the fixed mask (`sparsegpt_prune(..., mask=keep)`). The mask is exactly D-Pruner's,
so D-Pruner + reconstruction against SparseGPT on the same windows compares the two masks alone.

Each matrix's notes carry the layer-output error before and after the update, over every
calibration token: tr((W - W') H (W - W')^T) / tr(W H W^T)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pruners.driver import LayerPass, run_layerwise
from pruners.hessian import Hessian
from pruners.settings import DriverSettings, MatrixReport
from pruners.sparsegpt import sparsegpt_prune

KeepOf = Callable[[str], torch.Tensor]  # matrix name -> its bool keep-mask


def output_error(weight: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """||W X - W' X||^2 / ||W X||^2 over all calibration tokens, from H (its scale cancels)."""
    W, H = weight.double(), hessian.double()
    D = W - new.double()
    return float(((D @ H) * D).sum() / ((W @ H) * W).sum().clamp_min(1e-300))


class FixedMaskUpdate(LayerPass):
    """Driver method: each matrix keeps exactly `keep_of(name)`; the kept weights get
    SparseGPT's OBS compensation."""

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


def reconstruct(model: nn.Module, ids: torch.Tensor, keep_of: KeepOf, percdamp: float,
                driver: DriverSettings, device: torch.device) -> list[MatrixReport]:
    """Prune the dense `model` to the masks `keep_of` gives, compensating the kept weights layer
    by layer on `ids`; returns the driver's per-matrix reports."""
    method = FixedMaskUpdate(keep_of, percdamp)
    return run_layerwise(model, ids, method, driver, device, label="dpruner reconstruct")
