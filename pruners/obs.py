"""SparseGPT's OBS pruning step for one matrix (Frantar & Alistarh, 2023), pure math: shared by
`pruner=sparsegpt` (mask chosen as it goes) and the fixed-mask update of every other method
(pruners/mask_update.py).

Columns are processed left to right in blocks of `blocksize`; the mask of each block is chosen
when the block starts (adaptive mask selection) by the OBS score w^2 / [U]_jj^2 with U the upper
Cholesky factor of the damped H^-1; each pruned weight's error is spread over the remaining
columns of the block at once and over later blocks in one lazy batched update."""

from __future__ import annotations

import torch

from pruners.hessian import damped_inverse, exact_matmul
from pruners.masks import nm_mask, unstructured_mask
from pruners.pattern import Pattern


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    pattern: Pattern | None = None, blocksize: int = 128, percdamp: float = 0.01,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Return (pruned and compensated weight in fp32, notes). With `mask` (bool keep-mask, as the
    weight) the mask is fixed: no selection, only the OBS compensation of the kept weights (with
    a fixed mask the result does not depend on `blocksize`, only its rounding does)."""
    pattern = pattern or Pattern()
    fixed = mask is not None
    with exact_matmul():
        W = weight.detach().float().clone()
        inverse = damped_inverse(hessian, percdamp)
        W[:, inverse.dead] = 0
        # U is the upper Cholesky factor of H^-1: row i of U, scaled by 1/U_ii, is the OBS update
        # that removing column i's weight makes to the columns after it, given the columns
        # before i are already fixed. U_ii^2 plays the role of [H^-1]_ii in the OBS score.
        U = inverse.upper
        columns = W.shape[1]
        keep = mask.to(W.device, torch.bool) if fixed else torch.ones_like(W, dtype=torch.bool)
        for start in range(0, columns, blocksize):
            end = min(start + blocksize, columns)
            W1 = W[:, start:end].clone()  # this block's weights, updated in place as columns go
            U1 = U[start:end, start:end]
            d = torch.diagonal(U1)
            errors = torch.zeros_like(W1)  # scaled errors of this block, for the lazy update below
            # adaptive mask: chosen once per block on its current weights (N:M: per group, below)
            if not fixed and not pattern.structured:
                keep[:, start:end] = unstructured_mask(W1.pow(2) / d.pow(2).unsqueeze(0), sparsity)
            for i in range(end - start):
                if not fixed and pattern.structured and i % pattern.m == 0:  # N:M group starts
                    group = slice(i, i + pattern.m)
                    score = W1[:, group].pow(2) / d[group].pow(2).unsqueeze(0)
                    keep[:, start + i : start + i + pattern.m] = nm_mask(score, pattern.n, pattern.m)
                w = W1[:, i]
                q = w * keep[:, start + i]  # column i after pruning (kept weights unchanged)
                err = (w - q) / d[i]  # the OBS error of each row's removed weight, scaled by 1/U_ii
                # compensate: move the block's later columns along row i of U so that the layer
                # output changes as little as possible given what was removed
                W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
                W1[:, i] = q
                errors[:, i] = err
            W[:, start:end] = W1
            # lazy batch update: the same compensation for every column after the block, in one
            # matrix product instead of one rank-1 update per column
            W[:, end:] -= errors @ U[start:end, end:]
    notes = {"percdamp": inverse.percdamp, "damp_retries": inverse.retries,
             "dead_inputs": int(inverse.dead.sum())}
    return W, notes
