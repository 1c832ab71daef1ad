"""SparseGPT and the shared Hessian code on single layers with known inputs."""

from __future__ import annotations

import pytest
import torch

from pruners.driver import relative_error
from pruners.hessian import Hessian, damped_inverse
from pruners.magnitude import magnitude_mask
from pruners.obs import sparsegpt_prune
from pruners.pattern import Pattern
from pruners.scores import ColumnSquares
from pruners.wanda import wanda_mask


def correlated_inputs(tokens: int, columns: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    # feature scales spread over the columns in random order, as outlier features are
    scales = torch.linspace(0.2, 4.0, columns)[torch.randperm(columns, generator=generator)]
    return (torch.randn(tokens, columns, generator=generator) @ mixing) * scales


def layer_case(rows: int = 24, columns: int = 64, tokens: int = 512):
    torch.manual_seed(0)
    weight = torch.randn(rows, columns)
    x = correlated_inputs(tokens, columns)
    hessian, squares = Hessian(columns, x.device), ColumnSquares(columns, x.device)
    hessian.add(x)
    squares.add(x)
    return weight, x, hessian, squares


@pytest.mark.parametrize("text", ["unstructured", "2:4"])
def test_sparsegpt_error_below_wanda_and_magnitude(text: str) -> None:
    pattern = Pattern.parse(text)
    weight, x, hessian, squares = layer_case()
    pruned, _ = sparsegpt_prune(weight, hessian.matrix(), 0.5, pattern, blocksize=32)
    wanda = weight * wanda_mask(weight, squares.norms(), 0.5, pattern)
    magnitude = weight * magnitude_mask(weight, 0.5, pattern, "per_matrix")
    errors = {name: relative_error(x, weight, w) for name, w in
              {"sparsegpt": pruned, "wanda": wanda, "magnitude": magnitude}.items()}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_sparsegpt_exact_sparsity_per_block() -> None:
    weight, _, hessian, _ = layer_case(rows=16, columns=96)
    pruned, _ = sparsegpt_prune(weight, hessian.matrix(), 0.6, blocksize=32)
    for start in range(0, 96, 32):
        assert int((pruned[:, start : start + 32] == 0).sum()) == round(0.6 * 16 * 32)


def test_sparsegpt_nm_per_group() -> None:
    weight, _, hessian, _ = layer_case()
    pruned, _ = sparsegpt_prune(weight, hessian.matrix(), 0.5, Pattern.parse("2:4"), blocksize=32)
    assert bool(((pruned != 0).reshape(24, 16, 4).sum(-1) == 2).all())


def test_sparsegpt_zero_sparsity_leaves_weight_unchanged() -> None:
    weight, _, hessian, _ = layer_case()
    pruned, _ = sparsegpt_prune(weight, hessian.matrix(), 0.0)
    assert torch.allclose(pruned, weight, atol=1e-6)


def test_dead_inputs_zeroed_and_reported() -> None:
    weight, x, _, _ = layer_case(columns=16)
    x[:, 3] = 0
    hessian = Hessian(16, x.device)
    hessian.add(x)
    pruned, notes = sparsegpt_prune(weight, hessian.matrix(), 0.25, blocksize=8)
    assert notes["dead_inputs"] == 1 and bool((pruned[:, 3] == 0).all())


def test_dampening_escalates_on_failed_cholesky() -> None:
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    result = damped_inverse(indefinite, percdamp=0.01, max_tries=8)
    assert result.retries > 0 and result.percdamp > 0.01


def test_inverse_diag_matches_explicit_inverse() -> None:
    _, _, hessian, _ = layer_case(columns=12)
    H = hessian.matrix().double()
    damped = H + 0.01 * torch.diagonal(H).mean() * torch.eye(12, dtype=torch.float64)
    expected = torch.linalg.inv(damped).diagonal()
    result = damped_inverse(hessian.matrix(), 0.01)
    assert torch.allclose(result.inverse_diag.double(), expected, rtol=1e-5)
    upper = result.upper.double()
    assert torch.allclose(upper.t() @ upper, torch.linalg.inv(damped), rtol=1e-4, atol=1e-8)
