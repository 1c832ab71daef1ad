"""RIA's score and masks against brute-force loops, and RIA run through the layer-by-layer driver."""

from __future__ import annotations

import pytest
import torch

from core.calibration import Calibration
from core.errors import ConfigError
from core.structure import decoder_layers, model_linears, prunable_linears
from pruners import build
from pruners.pattern import Pattern
from pruners.ria import ria_mask, ria_score
from tests.test_masks import brute_force_keep

CPU = torch.device("cpu")
QUIET = {"progress": False, "batch_size": 4}


def brute_force_scores(weight: torch.Tensor, norms: torch.Tensor, a: float) -> list[list[float]]:
    """(|W_ij| / sum over row i + |W_ij| / sum over column j) * norm_j^a, one weight at a time."""
    rows, cols = weight.shape
    w = [[abs(float(weight[i, j])) for j in range(cols)] for i in range(rows)]
    row_sum = [sum(w[i][j] for j in range(cols)) for i in range(rows)]
    col_sum = [sum(w[i][j] for i in range(rows)) for j in range(cols)]
    return [[(w[i][j] / row_sum[i] + w[i][j] / col_sum[j]) * float(norms[j]) ** a for j in range(cols)]
            for i in range(rows)]


def random_case(seed: int, rows: int = 6, cols: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight with rows and columns of very different scales, and the norms of skewed inputs."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * torch.linspace(0.2, 2.0, rows).unsqueeze(1)
    inputs = torch.randn(30, cols, generator=generator) * torch.linspace(0.1, 4.0, cols)
    return weight, inputs.pow(2).sum(0).sqrt()


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0])
def test_score_matches_brute_force(a: float) -> None:
    weight, norms = random_case(0)
    expected = torch.tensor(brute_force_scores(weight, norms, a))
    assert torch.allclose(ria_score(weight, norms, a), expected, rtol=1e-5)


def test_all_zero_rows_and_columns_score_zero_not_nan() -> None:
    weight, norms = random_case(1)
    weight[2], weight[:, 5] = 0.0, 0.0
    score = ria_score(weight, norms)
    assert not score.isnan().any()
    assert (score[2] == 0).all() and (score[:, 5] == 0).all() and (score[score != 0] > 0).all()


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_per_matrix_mask_matches_brute_force(sparsity: float) -> None:
    weight, norms = random_case(2)
    keep = ria_mask(weight, norms, sparsity, Pattern(), "per_matrix")
    flat = [s for row in brute_force_scores(weight, norms, 0.5) for s in row]
    assert keep.flatten().tolist() == brute_force_keep(flat, round(sparsity * len(flat)))
    assert int((~keep).sum()) == round(sparsity * weight.numel())


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_per_row_mask_matches_brute_force(sparsity: float) -> None:
    weight, norms = random_case(3)
    keep = ria_mask(weight, norms, sparsity, Pattern(), "per_row", a=1.0)
    scores = brute_force_scores(weight, norms, 1.0)
    for row in range(weight.shape[0]):
        assert keep[row].tolist() == brute_force_keep(scores[row], round(sparsity * weight.shape[1]))


def test_per_matrix_and_per_row_choose_differently() -> None:
    """The row scales of random_case make whole-matrix comparison empty the small rows more."""
    weight, norms = random_case(4)
    per_matrix = ria_mask(weight, norms, 0.5, Pattern(), "per_matrix")
    per_row = ria_mask(weight, norms, 0.5, Pattern(), "per_row")
    assert not torch.equal(per_matrix, per_row)
    assert len(set(per_matrix.sum(1).tolist())) > 1 and set(per_row.sum(1).tolist()) == {8}


@pytest.mark.parametrize("group", ["per_matrix", "per_row"])
def test_two_four_keeps_the_two_highest_of_every_four(group: str) -> None:
    weight, norms = random_case(5)
    keep = ria_mask(weight, norms, 0.5, Pattern.parse("2:4"), group)
    scores = brute_force_scores(weight, norms, 0.5)
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], 4):
            group_scores = scores[row][start : start + 4]
            assert keep[row, start : start + 4].tolist() == brute_force_keep(group_scores, 2)


@pytest.mark.parametrize("options", [{"a": -0.5}, {"a": "half"}, {"a": float("inf")}, {"group": "row"},
                                     {"group": "per_block"}])
def test_bad_options_are_one_config_error(options: dict) -> None:
    key = next(iter(options))
    with pytest.raises(ConfigError, match=f"pruner.{key}="):
        build("ria", **options)


def layer0_inputs(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer-0 matrix's inputs over the calibration tokens: layer 0 reads the embeddings,
    so they are the same before and after pruning and can be gathered outside the driver."""
    seen: dict[str, list[torch.Tensor]] = {}
    linears = prunable_linears(decoder_layers(model)[0])
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, []).append(args[0]))
               for n, m in linears.items()]
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return {name: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for name, xs in seen.items()}


@pytest.mark.parametrize(("group", "pattern"), [("per_matrix", "unstructured"), ("per_row", "unstructured"),
                                                ("per_matrix", "2:4")])
def test_driver_prunes_every_matrix_to_the_target(group: str, pattern: str, make_tiny, calib_ids) -> None:
    model = make_tiny("llama")
    inputs = layer0_inputs(model, calib_ids)
    first = prunable_linears(decoder_layers(model)[0])
    dense = {name: m.weight.detach().clone() for name, m in first.items()}
    pruner = build("ria", sparsity=0.6, pattern=pattern, group=group, driver=QUIET)
    reports = pruner.prune(model, Calibration(ids=calib_ids), CPU)
    linears = model_linears(model)
    assert [r.name for r in reports] == list(linears) and len(linears) == 7 * len(decoder_layers(model))
    for linear in linears.values():
        rows, cols = linear.weight.shape
        zeros = (linear.weight == 0).sum(1)
        if pattern == "2:4":
            assert int(zeros.sum()) == rows * cols // 2
        elif group == "per_row":
            assert zeros.tolist() == [round(0.6 * cols)] * rows
        else:
            assert int(zeros.sum()) == round(0.6 * rows * cols)
    for name, linear in first.items():
        norms = inputs[name].pow(2).sum(0).sqrt()
        expected = ria_mask(dense[name], norms, pruner.sparsity, Pattern.parse(pattern), group)
        assert torch.equal(linear.weight != 0, expected)
