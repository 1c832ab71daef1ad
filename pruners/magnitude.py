"""Magnitude pruning: score |W|, compared over the whole matrix (the baselines' convention) or
per output row. Needs no data, so it skips the layer-by-layer driver."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from core.calibration import Calibration
from core.checks import choice
from core.structure import model_linears
from pruners.allocation import Allocation
from pruners.base import MatrixReport, Pruner, register
from pruners.masks import SCORE_GROUPS, select_mask
from pruners.pattern import Pattern


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern, group: str) -> torch.Tensor:
    return select_mask(weight.abs().float(), sparsity, pattern, SCORE_GROUPS[group])


@register("magnitude")
class Magnitude(Pruner):
    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", driver=None,
                 allocation: Allocation | None = None, group: str = "per_matrix", **follow: Any) -> None:
        super().__init__(sparsity, pattern, driver, allocation, **follow)
        self.group = choice("pruner.group", group, sorted(SCORE_GROUPS))

    @torch.no_grad()
    def prune_model(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        reports = []
        for name, linear in tqdm(model_linears(model).items(), desc="magnitude", unit="matrix",
                                 disable=not self.driver.progress):
            start = time.perf_counter()
            weight = linear.weight.data
            keep = magnitude_mask(weight, self.sparsity_of(name), self.pattern, self.group)
            weight.copy_(self.keep_weights(name, weight, keep))
            reports.append(MatrixReport.since(start, name, weight))
        return reports
