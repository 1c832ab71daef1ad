"""Mask selection against independent brute-force computations."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from pruners.magnitude import magnitude_mask
from pruners.masks import select_mask
from pruners.pattern import Pattern
from pruners.wanda import wanda_mask


def brute_force_keep(scores: list[float], prune: int) -> list[bool]:
    """Prune the `prune` lowest scores; among equal scores the lower index goes first."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    pruned = set(order[:prune])
    return [i not in pruned for i in range(len(scores))]


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.9])
def test_magnitude_matches_brute_force(sparsity: float) -> None:
    torch.manual_seed(1)
    weight = torch.randn(6, 10).round(decimals=1)  # rounding makes many ties
    keep = magnitude_mask(weight, sparsity, Pattern(), "per_matrix")
    flat = weight.abs().flatten().tolist()
    expected = brute_force_keep(flat, round(sparsity * len(flat)))
    assert keep.flatten().tolist() == expected


def test_magnitude_per_row_matches_brute_force() -> None:
    torch.manual_seed(2)
    weight = torch.randn(5, 8).round(decimals=1)
    keep = magnitude_mask(weight, 0.5, Pattern(), "per_row")
    for row in range(5):
        assert keep[row].tolist() == brute_force_keep(weight[row].abs().tolist(), 4)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.6])
def test_wanda_matches_brute_force(sparsity: float) -> None:
    torch.manual_seed(3)
    weight = torch.randn(7, 12)
    inputs = torch.randn(40, 12) * torch.linspace(0.1, 3.0, 12)
    norms = inputs.pow(2).sum(0).sqrt()
    keep = wanda_mask(weight, norms, sparsity, Pattern())
    for row in range(7):
        scores = [abs(float(weight[row, j])) * float(norms[j]) for j in range(12)]
        assert keep[row].tolist() == brute_force_keep(scores, round(sparsity * 12))


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_groups_exact(pattern: str) -> None:
    n, m = Pattern.parse(pattern).n, Pattern.parse(pattern).m
    torch.manual_seed(4)
    score = torch.randn(9, 32).abs()
    keep = select_mask(score, 0.5, Pattern.parse(pattern))
    groups = keep.reshape(9, 32 // m, m)
    assert bool((groups.sum(-1) == n).all())
    for row in range(9):
        for g in range(32 // m):
            part = score[row, g * m : (g + 1) * m].tolist()
            assert groups[row, g].tolist() == brute_force_keep(part, m - n)


@pytest.mark.parametrize("group", ["matrix", "row", "block"])
@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7])
def test_achieved_sparsity_per_group(group: str, sparsity: float) -> None:
    score = torch.rand(16, 256)
    keep = select_mask(score, sparsity, group=group, block=128)
    if group == "matrix":
        sizes = [(~keep).sum()]
        expect = [round(sparsity * keep.numel())]
    elif group == "row":
        sizes, expect = (~keep).sum(1).tolist(), [round(sparsity * 256)] * 16
    else:
        sizes = [(~keep[:, b : b + 128]).sum() for b in (0, 128)]
        expect = [round(sparsity * 16 * 128)] * 2
    assert [int(s) for s in sizes] == expect


def test_all_ties_are_deterministic() -> None:
    score = torch.ones(4, 8)
    first = select_mask(score, 0.5, group="row")
    assert torch.equal(first, select_mask(score.clone(), 0.5, group="row"))
    assert first[:, :4].logical_not().all() and first[:, 4:].all()  # lower indices pruned first


def test_selection_equals_a_stable_sort_with_ties_zeros_and_nans() -> None:
    """The k-th-value selection prunes exactly what a stable ascending sort's first k are, on
    heavy ties, signed zeros and NaN (which sorts last)."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        score = torch.randn(3, 40, generator=generator)
        score = score.round() if trial % 2 else (score * 4).round() / 4
        score[:, :3] = torch.tensor([-0.0, 0.0, -0.0])
        if trial % 3 == 0:
            score[:, ::4] = float("nan")
        for k in range(41):
            order = torch.sort(score, dim=-1, stable=True).indices[:, :k]
            expected = torch.ones_like(score, dtype=torch.bool).scatter_(-1, order, False)
            assert torch.equal(select_mask(score, k / 40, group="row"), expected), (trial, k)


@pytest.mark.parametrize("bad", ["3:2", "2:x", "0:4", "4:4", "2-4", ""])
def test_bad_patterns_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):
        Pattern.parse(bad)


def test_nm_needs_divisible_width() -> None:
    with pytest.raises(ConfigError, match="multiple of 4"):
        select_mask(torch.rand(2, 6), 0.5, Pattern.parse("2:4"))
