"""The unpruned baseline: changes nothing."""

from __future__ import annotations

import torch
from torch import nn

from core.calibration import Calibration
from pruners.allocation import Allocation
from pruners.base import MatrixReport, Pruner, register
from pruners.pattern import Pattern, check_sparsity


@register("dense")
class Dense(Pruner):
    def __init__(self, sparsity: float = 0.0, pattern: str = "unstructured", driver=None,
                 allocation: Allocation | None = None) -> None:
        Pattern.parse(pattern)  # still reject nonsense the user typed
        check_sparsity(sparsity)
        super().__init__(0.0, "unstructured", driver)  # the allocation of nothing is uniform

    def prune_model(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        return []
