"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, compared within each output row."""

from __future__ import annotations

import torch
from torch import nn

from core.calibration import Calibration
from pruners.base import MatrixReport, Pruner, register
from pruners.driver import run_layerwise
from pruners.masks import select_mask
from pruners.pattern import Pattern


class ColumnSquares:
    """Sum over calibration tokens of x_j^2 per input feature (Wanda's ||X_j||_2^2)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.sums = torch.zeros(columns, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sums += x.pow(2).sum(dim=0)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        return self.sums.sqrt()


def wanda_score(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    return weight.abs().float() * column_norms.float().unsqueeze(0)


def wanda_mask(weight: torch.Tensor, column_norms: torch.Tensor, sparsity: float,
               pattern: Pattern) -> torch.Tensor:
    return select_mask(wanda_score(weight, column_norms), sparsity, pattern, group="row")


@register("wanda")
class Wanda(Pruner):
    calibrated = True

    def make_stats(self, columns: int, device: torch.device) -> ColumnSquares:
        return ColumnSquares(columns, device)

    def prune_matrix(self, name: str, weight: torch.Tensor,
                     stats: ColumnSquares) -> tuple[torch.Tensor, dict]:
        mask = wanda_mask(weight, stats.norms(), self.sparsity, self.pattern)
        return weight * mask, {}

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        return run_layerwise(model, calibration.ids, self, self.driver, device, label="wanda")
