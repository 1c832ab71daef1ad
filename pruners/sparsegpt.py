"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with error compensation.

Columns are processed left to right in blocks of `blocksize`; the mask of each block is chosen
when the block starts (adaptive mask selection) by the OBS score w^2 / [U]_jj^2 with U the upper
Cholesky factor of the damped H^-1; each pruned weight's error is spread over the remaining
columns of the block at once and over later blocks in one lazy batched update."""

from __future__ import annotations

import torch
from torch import nn

from core.errors import ConfigError
from pruners.base import Calibration, MatrixReport, Pruner, register
from pruners.driver import run_layerwise
from pruners.hessian import damped_inverse, exact_matmul
from pruners.masks import nm_mask, parse_pattern, unstructured_mask
from pruners.stats import Hessian


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    pattern: str = "unstructured", blocksize: int = 128,
                    percdamp: float = 0.01) -> tuple[torch.Tensor, dict]:
    """Return (pruned and compensated weight in fp32, notes)."""
    nm = parse_pattern(pattern)
    with exact_matmul():
        W = weight.detach().float().clone()
        inverse = damped_inverse(hessian, percdamp)
        W[:, inverse.dead] = 0
        U = inverse.upper
        columns = W.shape[1]
        keep = torch.ones_like(W, dtype=torch.bool)
        for start in range(0, columns, blocksize):
            end = min(start + blocksize, columns)
            W1 = W[:, start:end].clone()
            U1 = U[start:end, start:end]
            d = torch.diagonal(U1)
            errors = torch.zeros_like(W1)
            if nm is None:
                keep[:, start:end] = unstructured_mask(W1.pow(2) / d.pow(2).unsqueeze(0), sparsity)
            for i in range(end - start):
                if nm is not None and i % nm[1] == 0:
                    group = slice(i, i + nm[1])
                    score = W1[:, group].pow(2) / d[group].pow(2).unsqueeze(0)
                    keep[:, start + i : start + i + nm[1]] = nm_mask(score, *nm)
                w = W1[:, i]
                q = w * keep[:, start + i]
                err = (w - q) / d[i]
                W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
                W1[:, i] = q
                errors[:, i] = err
            W[:, start:end] = W1
            W[:, end:] -= errors @ U[start:end, end:]
    notes = {"percdamp": inverse.percdamp, "damp_retries": inverse.retries,
             "dead_inputs": int(inverse.dead.sum())}
    return W, notes


@register("sparsegpt")
class SparseGPT(Pruner):
    needs = frozenset({"ids"})

    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", driver=None,
                 blocksize: int = 128, percdamp: float = 0.01) -> None:
        super().__init__(sparsity, pattern, driver)
        if int(blocksize) < 1:
            raise ConfigError(f"pruner.blocksize={blocksize!r} must be >= 1")
        if not 0 < float(percdamp) < 1:
            raise ConfigError(f"pruner.percdamp={percdamp!r} must be in (0, 1)")
        nm = parse_pattern(self.pattern)
        if nm is not None and int(blocksize) % nm[1]:
            raise ConfigError(f"pruner.blocksize={blocksize} must be a multiple of M for {pattern}")
        self.blocksize = int(blocksize)
        self.percdamp = float(percdamp)

    def make_stats(self, columns: int, device: torch.device) -> Hessian:
        return Hessian(columns, device)

    def prune_matrix(self, name: str, weight: torch.Tensor, stats: Hessian) -> tuple[torch.Tensor, dict]:
        return sparsegpt_prune(weight, stats.matrix(), self.sparsity, self.pattern,
                               self.blocksize, self.percdamp)

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        return run_layerwise(model, calibration.ids, self, self.driver, device, label="sparsegpt")
