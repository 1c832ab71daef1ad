"""Mask selection from a score matrix: unstructured (per matrix, per row, per column block) and
N:M. Pure functions. Ties are broken deterministically: among equal scores the weight with the
lower flat index is pruned first (a stable ascending sort), so quantized weights that tie a lot
still give the same mask on every run and machine."""

from __future__ import annotations

import torch

from core.errors import ConfigError
from pruners.pattern import Pattern

MASK_GROUPS = ("matrix", "row", "block")
SCORE_GROUPS = {"per_matrix": "matrix", "per_row": "row"}  # a method's `group` option -> mask group


def prune_count(n: int, sparsity: float) -> int:
    """How many of n weights one comparison group loses."""
    return int(round(sparsity * n))


def _keep_lowest_pruned(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask along the last dim with the k lowest scores pruned; among scores equal to
    the k-th lowest, the lowest indices go first, exactly as a stable ascending sort orders them.
    A selection (kthvalue) instead of a sort: the same mask, several times faster per matrix."""
    if k <= 0:
        return torch.ones_like(score, dtype=torch.bool)
    if k >= score.shape[-1]:
        return torch.zeros_like(score, dtype=torch.bool)
    kth = score.kthvalue(k, dim=-1, keepdim=True).values
    nan, kth_nan = score.isnan(), kth.isnan()  # NaN sorts after every number, as in torch.sort
    below = (score < kth) | (kth_nan & ~nan)
    tied = (score == kth) | (kth_nan & nan)
    ties_to_prune = k - below.sum(dim=-1, keepdim=True)
    return ~(below | (tied & (tied.cumsum(dim=-1) <= ties_to_prune)))


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest of every m consecutive input weights of each row."""
    rows, cols = score.shape
    if cols % m:
        raise ConfigError(f"pattern {n}:{m} needs the input width ({cols}) to be a multiple of {m}")
    grouped = score.reshape(rows, cols // m, m)
    return _keep_lowest_pruned(grouped, m - n).reshape(rows, cols)


def unstructured_mask(score: torch.Tensor, sparsity: float, group: str = "matrix",
                      block: int = 128) -> torch.Tensor:
    """Keep the top (1 - sparsity) of the scores within each comparison group."""
    if group == "matrix":
        flat = score.reshape(1, -1)
        return _keep_lowest_pruned(flat, prune_count(flat.shape[1], sparsity)).reshape(score.shape)
    if group == "row":
        return _keep_lowest_pruned(score, prune_count(score.shape[1], sparsity))
    if group == "block":
        keep = torch.empty_like(score, dtype=torch.bool)
        for start in range(0, score.shape[1], block):
            part = score[:, start : start + block]
            keep[:, start : start + block] = unstructured_mask(part, sparsity, "matrix")
        return keep
    raise ConfigError(f"mask group {group!r} is not valid; choose one of {MASK_GROUPS}")


def select_mask(score: torch.Tensor, sparsity: float, pattern: Pattern | None = None,
                group: str = "matrix", block: int = 128) -> torch.Tensor:
    """The keep-mask for a score matrix [out, in] under a pattern (None: unstructured)."""
    if pattern is not None and pattern.structured:
        return nm_mask(score, pattern.n, pattern.m)
    return unstructured_mask(score, sparsity, group, block)
