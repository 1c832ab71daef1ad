"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024): score
(|W_ij| / sum_j' |W_ij'| + |W_ij| / sum_i' |W_i'j|) * ||X_j||_2^a, compared over the whole matrix
by default (`group: per_row` compares within each output row, as Wanda does). A weight counts
when it is large relative to the other weights of its output row and of its input column, so a
row or column of uniformly small weights is not emptied wholesale. The activation norms are
Wanda's statistic (pruners/scores.py), gathered by the shared layer-by-layer driver."""

from __future__ import annotations

from typing import Any

import torch

from core.checks import as_float, choice
from pruners.allocation import Allocation
from pruners.base import LayerwisePruner, register
from pruners.masks import SCORE_GROUPS, select_mask
from pruners.pattern import Pattern
from pruners.scores import ColumnSquares


def _relative(magnitude: torch.Tensor, dim: int) -> torch.Tensor:
    """Each |W_ij| as a share of its row's (dim=1) or column's (dim=0) sum; an all-zero row or
    column gives shares of 0 (its weights are already gone), never 0/0."""
    total = magnitude.sum(dim=dim, keepdim=True)
    return magnitude / total.clamp_min(torch.finfo(magnitude.dtype).tiny)


def ria_score(weight: torch.Tensor, column_norms: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """The RIA score of every weight of `weight` [out, in], in fp32; `column_norms` [in] holds
    ||X_j||_2 over the calibration tokens. A scale common to all columns (the released code
    averages the squares over samples) changes no comparison, so the plain norm is used."""
    magnitude = weight.abs().float()
    relative = _relative(magnitude, dim=1) + _relative(magnitude, dim=0)
    return relative * column_norms.float().pow(a).unsqueeze(0)


def ria_mask(weight: torch.Tensor, column_norms: torch.Tensor, sparsity: float, pattern: Pattern,
             group: str = "per_matrix", a: float = 0.5) -> torch.Tensor:
    """Keep-mask of the highest RIA scores (N:M: the N highest of every M inputs of a row)."""
    return select_mask(ria_score(weight, column_norms, a), sparsity, pattern, SCORE_GROUPS[group])


@register("ria")
class RIA(LayerwisePruner):
    row_shards = True

    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", driver=None,
                 allocation: Allocation | None = None, a: float = 0.5,
                 group: str = "per_matrix", **follow: Any) -> None:
        super().__init__(sparsity, pattern, driver, allocation, **follow)
        self.a = as_float("pruner.a", a, 0.0)
        self.group = choice("pruner.group", group, sorted(SCORE_GROUPS))

    def make_stats(self, columns: int, device: torch.device) -> ColumnSquares:
        return ColumnSquares(columns, device)

    def finish_matrix(self, name: str, weight: torch.Tensor,
                      stats: ColumnSquares) -> tuple[torch.Tensor, dict]:
        keep = ria_mask(weight, stats.norms(), self.sparsity_of(name), self.pattern, self.group, self.a)
        return self.keep_weights(name, weight, keep), {}

