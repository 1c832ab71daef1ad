"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with error compensation, layer by layer
(the per-matrix step is pruners/obs.py). Its mask and its update are one choice, so
`pruner.reconstruct` and `pruner.refine`, which follow other methods' masks, are errors here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from core.checks import as_float, as_int
from core.errors import ConfigError
from pruners.allocation import Allocation
from pruners.base import LayerwisePruner, register
from pruners.hessian import Hessian
from pruners.obs import sparsegpt_prune


@register("sparsegpt")
class SparseGPT(LayerwisePruner):
    row_shards = True
    updates_kept_weights = True
    mask_reads_percdamp = True  # its own Hessian dampening

    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", driver=None,
                 allocation: Allocation | None = None, blocksize: int = 128, percdamp: float = 0.01,
                 reconstruct: str = "none", refine: str = "none",
                 dsnot: Mapping[str, Any] | None = None) -> None:
        super().__init__(sparsity, pattern, driver, allocation, reconstruct=reconstruct, refine=refine,
                         percdamp=percdamp, dsnot=dsnot)
        self.blocksize = as_int("pruner.blocksize", blocksize, 1)
        self.percdamp = as_float("pruner.percdamp", percdamp, 0.0, 1.0, open_low=True, open_high=True)
        if self.pattern.structured and self.blocksize % self.pattern.m:
            raise ConfigError(f"pruner.blocksize={blocksize} must be a multiple of M for {self.pattern}")

    def make_stats(self, columns: int, device: torch.device) -> Hessian:
        return Hessian(columns, device)

    def finish_matrix(self, name: str, weight: torch.Tensor, stats: Hessian) -> tuple[torch.Tensor, dict]:
        return sparsegpt_prune(weight, stats.matrix(), self.sparsity_of(name), self.pattern,
                               self.blocksize, self.percdamp)

