"""Per-matrix input statistics gathered by forward hooks: pure accumulators, no model code."""

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


class Hessian:
    """H = 2 X X^T / n over calibration tokens (the layer-wise OBS Hessian)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.sums = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sums.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def matrix(self) -> torch.Tensor:
        return self.sums * (2.0 / max(self.tokens, 1))
