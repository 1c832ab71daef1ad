"""DSnoT's mask refinement against computations straight from the calibration inputs X: the
statistics, the expected error r_i, each row's count of kept weights, N:M groups, and the swaps
an explicit per-row loop of the released rule makes."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError
from pruners.dsnot import (
    DSNOT_DEFAULTS,
    DSnoTSettings,
    InputMoments,
    dsnot_options,
    dsnot_refine,
    expected_error,
)
from pruners.magnitude import magnitude_mask
from pruners.pattern import Pattern
from pruners.wanda import wanda_mask

WINDOWS, TOKENS = 6, 40  # calibration windows of the random layers, tokens per window


def random_layer(rows: int = 48, columns: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W [rows, columns] and inputs X [windows, tokens, columns] with nonzero, uneven means and
    uneven spreads per feature."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=gen)
    spread = torch.rand(columns, generator=gen) * 2 + 0.1
    shift = torch.randn(columns, generator=gen)
    x = torch.randn(WINDOWS, TOKENS, columns, generator=gen, dtype=torch.float64) * spread + shift
    return weight, x


def moments_of(x: torch.Tensor) -> InputMoments:
    moments = InputMoments(x.shape[-1], torch.device("cpu"))
    moments.add(x[:2])  # two batches, as the driver feeds them
    moments.add(x[2:])
    return moments


def error_from_inputs(weight: torch.Tensor, keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """r_i straight from X: the mean over every calibration token of the output the mask removes."""
    tokens = x.reshape(-1, x.shape[-1])
    removed = weight.double() * (~keep)
    return (tokens @ removed.t()).mean(dim=0)


def initial_masks(weight: torch.Tensor, x: torch.Tensor, sparsity: float,
                  pattern: Pattern) -> dict[str, torch.Tensor]:
    norms = x.reshape(-1, x.shape[-1]).pow(2).sum(dim=0).sqrt().float()
    return {"wanda": wanda_mask(weight, norms, sparsity, pattern),
            "magnitude": magnitude_mask(weight, sparsity, pattern, "per_matrix")}


def test_moments_match_the_inputs() -> None:
    _, x = random_layer()
    moments = moments_of(x)
    tokens = x.reshape(-1, x.shape[-1])
    assert moments.tokens == WINDOWS * TOKENS
    torch.testing.assert_close(moments.mean(), tokens.mean(dim=0))
    torch.testing.assert_close(moments.squared_norms(), tokens.pow(2).sum(dim=0))
    torch.testing.assert_close(moments.window_sums(), tokens.sum(dim=0) / WINDOWS)
    within = x.var(dim=1, unbiased=False).mean(dim=0)  # each window around its own mean
    torch.testing.assert_close(moments.variance(), within)
    assert bool((moments.variance() < tokens.var(dim=0, unbiased=False)).all())


def test_moments_take_a_two_dimensional_input_as_one_window() -> None:
    _, x = random_layer()
    moments = InputMoments(x.shape[-1], torch.device("cpu"))
    moments.add(x[0])
    torch.testing.assert_close(moments.window_sums(), x[0].sum(dim=0))
    torch.testing.assert_close(moments.variance(), x[0].var(dim=0, unbiased=False))


def test_expected_error_is_the_mean_removed_output() -> None:
    weight, x = random_layer()
    keep = initial_masks(weight, x, 0.5, Pattern())["wanda"]
    torch.testing.assert_close(expected_error(weight, keep, moments_of(x).mean()),
                               error_from_inputs(weight, keep, x))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("start", ["wanda", "magnitude"])
def test_rows_keep_their_count_and_the_error_shrinks(start: str, sparsity: float) -> None:
    weight, x = random_layer()
    keep = initial_masks(weight, x, sparsity, Pattern())[start]
    given, dense = keep.clone(), weight.clone()
    refined, notes = dsnot_refine(weight, keep, moments_of(x), update_threshold=0.0)
    assert refined.dtype == torch.bool and refined.shape == keep.shape
    assert torch.equal(keep, given) and torch.equal(weight, dense)  # only a new mask comes back
    assert torch.equal(refined.sum(dim=1), keep.sum(dim=1))
    assert notes["swaps"] > 0 and not torch.equal(refined, keep)
    before = error_from_inputs(weight, keep, x).abs().mean()
    after = error_from_inputs(weight, refined, x).abs().mean()
    assert after < before
    assert notes["error_before"] == pytest.approx(float(before))
    assert notes["error_after"] == pytest.approx(float(after))


def test_every_swap_moves_the_error_towards_zero() -> None:
    """Cycle k+1 adds at most one swap per row to cycle k's mask, and it lowers r_i if r_i > 0,
    raises it if r_i < 0 (the released default may overshoot zero)."""
    weight, x = random_layer()
    keep = initial_masks(weight, x, 0.5, Pattern())["wanda"]
    moments = moments_of(x)
    previous = keep
    for cycles in range(1, 12):
        refined, _ = dsnot_refine(weight, keep, moments, max_cycles=cycles, update_threshold=0.0)
        assert int((refined != previous).sum(dim=1).max()) <= 2
        old, new = error_from_inputs(weight, previous, x), error_from_inputs(weight, refined, x)
        moved = (refined != previous).any(dim=1)
        assert bool(moved.any())
        assert bool(((new - old)[moved] * old[moved].sign() < 0).all())
        assert torch.equal(new[~moved], old[~moved])
        previous = refined


@pytest.mark.parametrize("start", ["wanda", "magnitude"])
def test_same_sign_never_raises_any_rows_error(start: str) -> None:
    weight, x = random_layer(seed=3)
    keep = initial_masks(weight, x, 0.6, Pattern())[start]
    moments = moments_of(x)
    initial = error_from_inputs(weight, keep, x)
    previous = initial.abs()
    for cycles in range(0, 30, 3):
        refined, _ = dsnot_refine(weight, keep, moments, max_cycles=cycles, same_sign=True,
                                  update_threshold=0.0)
        error = error_from_inputs(weight, refined, x)
        assert bool((error.abs() <= previous + 1e-12).all())
        assert bool((error.sign() == initial.sign()).all())
        previous = error.abs()
    assert float(previous.mean()) < 0.5 * float(initial.abs().mean())


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(4, 8), Pattern(1, 4)])
@pytest.mark.parametrize("start", ["wanda", "magnitude"])
def test_n_m_groups_keep_n_and_the_error_keeps_its_sign(start: str, pattern: Pattern) -> None:
    weight, x = random_layer()
    keep = initial_masks(weight, x, 0.5, pattern)[start]
    refined, notes = dsnot_refine(weight, keep, moments_of(x), pattern=pattern, update_threshold=0.0)
    groups = refined.reshape(refined.shape[0], -1, pattern.m).sum(dim=-1)
    assert bool((groups == pattern.n).all())
    assert notes["swaps"] > 0
    before, after = error_from_inputs(weight, keep, x), error_from_inputs(weight, refined, x)
    assert bool((after.sign() == before.sign()).all())
    assert float(after.abs().mean()) < float(before.abs().mean())


def test_refinement_is_deterministic_with_ties() -> None:
    weight, x = random_layer()
    weight = (weight * 2).round() / 2  # many equal weights
    x[..., 1::2] = x[..., 0::2]  # pairs of equal input features
    keep = initial_masks(weight, x, 0.5, Pattern())["magnitude"]
    first = dsnot_refine(weight, keep, moments_of(x))
    second = dsnot_refine(weight.clone(), keep.clone(), moments_of(x.clone()))
    assert torch.equal(first[0], second[0]) and first[1] == second[1]


def test_the_threshold_stops_rows_whose_error_is_small() -> None:
    weight, x = random_layer()
    keep = initial_masks(weight, x, 0.5, Pattern())["wanda"]
    moments = moments_of(x)
    per_window = error_from_inputs(weight, keep, x).abs() * TOKENS  # the threshold's unit
    ordered = per_window.sort().values
    threshold = float(ordered[len(ordered) // 2: len(ordered) // 2 + 2].mean())  # between two rows
    refined, _ = dsnot_refine(weight, keep, moments, update_threshold=threshold)
    small = per_window <= threshold
    assert torch.equal(refined[small], keep[small])
    assert not torch.equal(refined[~small], keep[~small])
    untouched, notes = dsnot_refine(weight, keep, moments, update_threshold=float(per_window.max()))
    assert torch.equal(untouched, keep) and notes["swaps"] == 0 and notes["cycles"] == 0


# An explicit per-row loop of the released rule, from statistics computed here from X.

def sign(value: float) -> int:
    return (value > 0) - (value < 0)


def released_rule(weight: list[float], keep: list[bool], mean: list[float], window_sum: list[float],
                  variance: list[float], norm: list[float], *, cycles: int, threshold: float, power: float,
                  same_sign: bool, m: int = 0) -> list[bool]:
    """One row. Grow: the pruned weight whose W s (s: x summed per window) has the sign of r and
    the largest |W s| / var^power (ties: the higher column when r > 0, the lower when r < 0). Cut:
    the kept weight with W s of the other sign (N:M: any kept weight of the grown one's group) and
    the lowest |W| ||X|| (ties: the lower column). Only weights kept at the start are cut, only
    those pruned at the start grow. Stop when |r| <= threshold, when the sign check fails, when
    there is no candidate, or after `cycles`."""
    columns = range(len(weight))
    contribution = [weight[j] * window_sum[j] for j in columns]
    growth = [contribution[j] / variance[j] ** power if power else contribution[j] for j in columns]
    wanda = [abs(weight[j]) * norm[j] for j in columns]
    keep = list(keep)
    can_grow = {j for j in columns if not keep[j]}
    can_cut = {j for j in columns if keep[j]}
    error = sum(contribution[j] for j in can_grow)
    start_sign = sign(error)
    for _ in range(cycles):
        if abs(error) <= threshold:
            break
        up = error > 0
        grow = [j for j in can_grow if (contribution[j] > 0 if up else contribution[j] < 0)]
        if not grow:
            break
        grown = max(grow, key=lambda j: (growth[j], j)) if up else min(grow, key=lambda j: (growth[j], j))
        if m:
            cut = [j for j in can_cut if j // m == grown // m]
        else:
            cut = [j for j in can_cut if (contribution[j] < 0 if up else contribution[j] > 0)]
        if not cut:
            break
        cutting = min(cut, key=lambda j: (wanda[j], j))
        after = error + contribution[cutting] - contribution[grown]
        if (same_sign or m) and sign(after) != start_sign:
            break
        keep[grown], keep[cutting] = True, False
        can_grow.discard(grown)
        can_cut.discard(cutting)
        error = after
    return keep


@pytest.mark.parametrize("cycles", [1, 3, 50])
@pytest.mark.parametrize(("pattern", "same_sign", "power"), [
    (Pattern(), False, 1.0), (Pattern(), True, 1.0), (Pattern(), False, 0.0), (Pattern(), False, 2.0),
    (Pattern(2, 4), False, 1.0), (Pattern(1, 4), False, 1.0)])
def test_swaps_match_an_explicit_loop_of_the_released_rule(cycles: int, pattern: Pattern, same_sign: bool,
                                                           power: float) -> None:
    weight, x = random_layer(rows=16, columns=48, seed=5)
    weight = (weight * 2).round() / 2
    x[..., 1::4] = x[..., 0::4]  # equal input features, so that criteria tie
    keep = initial_masks(weight, x, 0.5, pattern)["wanda"]
    tokens = x.reshape(-1, x.shape[-1])
    mean, window_sum = tokens.mean(dim=0), tokens.sum(dim=0) / WINDOWS
    variance = x.var(dim=1, unbiased=False).mean(dim=0)
    norm = tokens.pow(2).sum(dim=0).sqrt()
    threshold = float(error_from_inputs(weight, keep, x).abs().median()) * TOKENS / 4
    refined, notes = dsnot_refine(weight, keep, moments_of(x), pattern=pattern, max_cycles=cycles,
                                  update_threshold=threshold, pow_of_var_regrowing=power, same_sign=same_sign)
    swaps = 0
    for row in range(weight.shape[0]):
        expected = released_rule(weight[row].tolist(), keep[row].tolist(), mean.tolist(),
                                 window_sum.tolist(), variance.tolist(), norm.tolist(), cycles=cycles,
                                 threshold=threshold, power=power, same_sign=same_sign, m=pattern.m)
        assert refined[row].tolist() == expected, f"row {row}"
        swaps += sum(a != b for a, b in zip(expected, keep[row].tolist(), strict=True)) // 2
    assert notes["swaps"] == swaps and swaps > 0


def test_one_cycle_on_a_hand_made_row() -> None:
    """Every input sums to 1 per window (mean 1/2, variance 1/4, equal norms), so W s = W. The
    pruned columns 0, 1, 5, 6 give r = 2 + 6 + 1 - 1 = 8 > 0: column 1 grows (6 / (1/4) is the
    largest); of the kept columns with W s < 0 (2 and 3), column 3 has the lower Wanda score and
    goes (column 7, W = 0, has the lowest score but would not lower r), leaving r = 0, which stops
    the row (at r = 0 column 6 could grow and column 4 go)."""
    x = torch.tensor([[[1.0] * 8, [0.0] * 8]] * 2, dtype=torch.float64)  # 2 windows of 2 tokens
    weight = torch.tensor([[2.0, 6.0, -4.0, -2.0, 8.0, 1.0, -1.0, 0.0]])
    keep = torch.tensor([[False, False, True, True, True, False, False, True]])
    moments = InputMoments(8, torch.device("cpu"))
    moments.add(x)
    refined, notes = dsnot_refine(weight, keep, moments, max_cycles=1, update_threshold=0.0)
    assert refined.tolist() == [[False, True, True, False, True, False, False, True]]
    assert notes["error_before"] == pytest.approx(4.0) and notes["error_after"] == 0.0
    longer, notes = dsnot_refine(weight, keep, moments, max_cycles=5, update_threshold=0.0)
    assert torch.equal(longer, refined) and notes["cycles"] == 1


def test_a_constant_input_feature_grows_first() -> None:
    """Var = 0 makes |W s| / Var infinite, as in the released code: such a pruned weight of the
    right sign grows before any other; rows still keep their count."""
    weight, x = random_layer()
    x[..., 5] = 2.0
    keep = initial_masks(weight, x, 0.5, Pattern())["wanda"]
    keep[:, 5] = False
    refined, _ = dsnot_refine(weight, keep, moments_of(x), max_cycles=1, update_threshold=0.0)
    r = error_from_inputs(weight, keep, x)
    same_sign = (weight[:, 5].double() * 2.0).sign() == r.sign()
    assert bool(same_sign.any()) and bool(refined[same_sign, 5].all())
    assert torch.equal(refined.sum(dim=1), keep.sum(dim=1))


def test_n_m_cuts_the_lower_column_of_a_tie_in_the_grown_weights_group() -> None:
    """2:4, inputs as above (W s = W). Pruned: columns 0, 1 (group 0) and 4, 5 (group 1), r = 1 +
    1 + 3 + 0.5 > 0. Column 4 grows (3 is the largest); its group's kept columns 6 and 7 tie in
    Wanda score (|W| = 2) and column 6 goes whatever its sign: r = 5.5 - 3 + 2 = 4.5."""
    x = torch.tensor([[[1.0] * 8, [0.0] * 8]] * 2, dtype=torch.float64)
    weight = torch.tensor([[1.0, 1.0, 5.0, 4.0, 3.0, 0.5, 2.0, -2.0]])
    keep = torch.tensor([[False, False, True, True, False, False, True, True]])
    moments = InputMoments(8, torch.device("cpu"))
    moments.add(x)
    refined, _ = dsnot_refine(weight, keep, moments, pattern="2:4", max_cycles=1, update_threshold=0.0)
    assert refined.tolist() == [[False, False, True, True, True, False, False, True]]


def test_settings_defaults_and_bad_values() -> None:
    settings = dsnot_options({})
    assert DSNOT_DEFAULTS == {"max_cycles": 50, "update_threshold": 0.1, "pow_of_var_regrowing": 1.0,
                              "same_sign": False, "skip_layer": "mlp"}
    assert settings.refine_options() == {"max_cycles": 50, "update_threshold": 0.1,
                                         "pow_of_var_regrowing": 1.0, "same_sign": False}
    assert not settings.applies_to("layers.3.mlp.up_proj")
    assert settings.applies_to("layers.3.self_attn.q_proj")
    assert dsnot_options({"skip_layer": "none"}).applies_to("layers.0.mlp.down_proj")
    assert dsnot_options(settings) is settings
    assert isinstance(settings, DSnoTSettings)


@pytest.mark.parametrize(("given", "named"), [
    ({"max_cycles": -1}, "pruner.dsnot.max_cycles"), ({"max_cycles": 2.5}, "pruner.dsnot.max_cycles"),
    ({"update_threshold": -0.1}, "pruner.dsnot.update_threshold"),
    ({"update_threshold": math.inf}, "pruner.dsnot.update_threshold"),
    ({"pow_of_var_regrowing": "big"}, "pruner.dsnot.pow_of_var_regrowing"),
    ({"same_sign": "yes"}, "pruner.dsnot.same_sign"), ({"skip_layer": "attn"}, "pruner.dsnot.skip_layer"),
    ({"cycles": 3}, "pruner.dsnot.cycles")])
def test_bad_settings_name_the_key(given: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        dsnot_options(given)


def test_n_m_needs_whole_groups_and_a_matching_mask() -> None:
    weight, x = random_layer(columns=6)
    moments = moments_of(x)
    keep = torch.ones_like(weight, dtype=torch.bool)
    with pytest.raises(ConfigError, match="does not divide"):
        dsnot_refine(weight, keep, moments, pattern="2:4")
    weight, x = random_layer(columns=8)
    with pytest.raises(ValueError, match="2 of every 4"):
        dsnot_refine(weight, torch.ones_like(weight, dtype=torch.bool), moments_of(x), pattern="2:4")
