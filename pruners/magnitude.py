"""Magnitude pruning: score |W|, compared over the whole matrix (the baselines' convention) or
per output row. Needs no data, so it skips the layer-by-layer driver."""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

from core.errors import ConfigError
from pruners.base import Calibration, MatrixReport, Pruner, model_linears, peak_memory_mb, register
from pruners.masks import select_mask

GROUPS = {"per_matrix": "matrix", "per_row": "row"}


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: str, group: str) -> torch.Tensor:
    return select_mask(weight.abs().float(), sparsity, pattern, GROUPS[group])


@register("magnitude")
class Magnitude(Pruner):
    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured",
                 driver=None, group: str = "per_matrix") -> None:
        super().__init__(sparsity, pattern, driver)
        if group not in GROUPS:
            raise ConfigError(f"pruner.group={group!r}; choose one of {sorted(GROUPS)}")
        self.group = group

    @torch.no_grad()
    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        reports = []
        linears = model_linears(model)
        for name, linear in tqdm(linears.items(), desc="magnitude", unit="matrix",
                                 disable=not self.driver.progress):
            start = time.perf_counter()
            weight = linear.weight.data
            weight.mul_(magnitude_mask(weight, self.sparsity, self.pattern, self.group))
            reports.append(MatrixReport(
                name, tuple(weight.shape), float((weight == 0).sum()) / weight.numel(), None,
                time.perf_counter() - start, peak_memory_mb(weight.device)))
        return reports
