"""Scores and statistics shared by several methods: Wanda's per-column input norms and its
|W| * ||X|| score (also OWL's outlier statistic)."""

from __future__ import annotations

import torch


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
