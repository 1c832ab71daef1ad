"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, compared within each output row."""

from __future__ import annotations

import torch

from pruners.base import LayerwisePruner, register
from pruners.masks import select_mask
from pruners.pattern import Pattern
from pruners.scores import ColumnSquares, wanda_score


def wanda_mask(weight: torch.Tensor, column_norms: torch.Tensor, sparsity: float,
               pattern: Pattern) -> torch.Tensor:
    return select_mask(wanda_score(weight, column_norms), sparsity, pattern, group="row")


@register("wanda")
class Wanda(LayerwisePruner):
    row_shards = True

    def make_stats(self, columns: int, device: torch.device) -> ColumnSquares:
        return ColumnSquares(columns, device)

    def finish_matrix(self, name: str, weight: torch.Tensor,
                     stats: ColumnSquares) -> tuple[torch.Tensor, dict]:
        keep = wanda_mask(weight, stats.norms(), self.sparsity_of(name), self.pattern)
        return self.keep_weights(name, weight, keep), {}

