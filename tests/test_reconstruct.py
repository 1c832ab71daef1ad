"""Weight reconstruction under a fixed mask (D-Pruner's `pruner.reconstruct`): SparseGPT's own
result reproduced from its mask, the layer error never above the plain mask's, and D-Pruner's
mask kept exactly while its weights move."""

from __future__ import annotations

import pytest
import torch

from core.calibration import Calibration
from core.structure import model_linears
from pruners import Allocation, Pruner, build
from pruners.hessian import Hessian
from pruners.magnitude import magnitude_mask
from pruners.mask_update import output_error
from pruners.obs import sparsegpt_prune
from pruners.pattern import Pattern
from tests.test_owl import tiny_dpruner  # noqa: F401  (fixture)

CPU = torch.device("cpu")


def layer(rows: int, columns: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight, correlated inputs X [tokens, columns] (as real activations are) and H = 2XX^T/n."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, columns, generator=generator)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    X = torch.randn(tokens, columns, generator=generator) @ (torch.eye(columns) + mixing)
    stats = Hessian(columns, CPU)
    stats.add(X)
    return W, X, stats.matrix()


def error_on(X: torch.Tensor, W: torch.Tensor, new: torch.Tensor) -> float:
    """||X W^T - X W'^T||^2 / ||X W^T||^2, written out on the inputs themselves."""
    X, W, new = X.double(), W.double(), new.double()
    return float((X @ (W - new).t()).pow(2).sum() / (X @ W.t()).pow(2).sum())


@pytest.mark.parametrize("pattern,blocksize", [("unstructured", 128), ("unstructured", 16), ("2:4", 16)])
def test_sparsegpt_mask_given_back_gives_sparsegpt_result(pattern: str, blocksize: int) -> None:
    W, _, H = layer(24, 64, 512, seed=1)
    own, _ = sparsegpt_prune(W, H, 0.5, Pattern.parse(pattern), blocksize)
    again, _ = sparsegpt_prune(W, H, 0.0, blocksize=blocksize, mask=own != 0)
    assert torch.equal(own, again)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_never_raises_the_layer_error(sparsity: float, seed: int) -> None:
    W, X, H = layer(32, 48, 400, seed)
    keep = magnitude_mask(W, sparsity, Pattern(), "per_matrix")
    new, _ = sparsegpt_prune(W, H, 0.0, percdamp=0.01, mask=keep)
    assert torch.equal(new != 0, keep)  # the mask is exactly the one given
    masked, rebuilt = error_on(X, W, W * keep), error_on(X, W, new)
    assert rebuilt < masked
    assert output_error(W, new, H) == pytest.approx(rebuilt, rel=1e-6)  # the notes' formula


def test_dpruner_reconstruction_keeps_its_mask_and_lowers_every_error(tiny_dpruner) -> None:  # noqa: F811
    import copy

    model, calibration = tiny_dpruner
    options = dict(sparsity=0.5, driver={"progress": False}, domain_calib={"nsamples": 4, "seqlen": 48},
                   batch_size=2)
    plain = copy.deepcopy(model)
    build("dpruner", **options).prune(plain, calibration, CPU)
    pruner = build("dpruner", **options, reconstruct="general")
    calib = {"source": "general", "nsamples": 4, "seqlen": 48, "mix": 0.5}
    assert set(pruner.calibration_requests(calib)) == {"general", "domain", "reconstruct"}
    reports = pruner.prune(model, Calibration(general=calibration["general"], domain=calibration["domain"],
                                              reconstruct=calibration["general"]), CPU)
    linears, plain_linears = model_linears(model), model_linears(plain)
    for report in reports:
        weight, before = linears[report.name].weight, plain_linears[report.name].weight
        assert torch.equal(weight != 0, before != 0)  # D-Pruner's mask, exactly
        assert not torch.equal(weight, before)  # the kept weights moved
        assert report.notes["error_reconstructed"] < report.notes["error_masked"]
    assert "reconstruct" in pruner.stages


def test_reconstruction_windows_set_the_cells_calibration_axis() -> None:
    """D-Pruner with `reconstruct=mixed` reads the calib group's mixed windows, so its record sits
    beside SparseGPT with calib=mixed; plain D-Pruner reads none of the group's windows."""
    calib = {"source": "mixed", "nsamples": 4, "seqlen": 48, "mix": 0.5}

    def source(pruner: Pruner) -> str | None:
        return pruner.calibration_source(pruner.calibration_requests(calib))

    assert source(build("dpruner", reconstruct="mixed")) == "mixed"
    assert source(build("dpruner")) is None
    assert source(build("sparsegpt")) == "mixed"
    owl = Allocation.of("owl", {"threshold": 5.0, "lambda_": 0.08})
    calib_general = {**calib, "source": "general"}  # OWL's windows come first: they are the axis
    both = build("dpruner", reconstruct="mixed", allocation=owl)
    assert both.calibration_source(both.calibration_requests(calib_general)) == "general"
