"""The unpruned baseline: changes nothing, reports the matrices' natural zeros."""

from __future__ import annotations

import torch
from torch import nn

from pruners.base import Calibration, MatrixReport, Pruner, model_linears, register
from pruners.masks import check_sparsity, parse_pattern


@register("dense")
class Dense(Pruner):
    def __init__(self, sparsity: float = 0.0, pattern: str = "unstructured", driver=None) -> None:
        check_sparsity(sparsity)  # still reject nonsense the user typed
        parse_pattern(pattern)
        super().__init__(0.0, "unstructured", driver)

    @property
    def target_sparsity(self) -> float:
        return 0.0

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        return [
            MatrixReport(name, tuple(m.weight.shape), float((m.weight == 0).sum()) / m.weight.numel(),
                         None, 0.0, 0.0)
            for name, m in model_linears(model).items()
        ]
