"""DSnoT (Zhang et al., ICLR 2024): a training-free refinement of a given keep-mask.

Per output row i, the mask removes an expected output r_i = sum_j (1 - keep_ij) W_ij E[x_j]. DSnoT
drives r_i towards zero by swaps that keep the row's count of kept weights: each cycle one pruned
weight whose contribution W_ij E[x_j] has the sign of r_i grows back (the largest contribution
divided by Var[x_j]^p: a large shift that is steady across tokens) and one kept weight whose
contribution has the opposite sign goes (the lowest Wanda score |W_ij| ||X_j||, the cheapest loss).
With N:M the weight that goes is the lowest-Wanda kept weight of the regrown weight's group, so
every group keeps its N. A row stops when |r_i| falls to the update threshold, when a swap is
refused (the sign check), when it has no candidate left, or at the cycle limit.

Pure math on one matrix and its input statistics; docs/methods.md#dsnot-mask-refinement says which
rule of the released code each step follows and where this module differs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from core.checks import as_bool, as_float, as_int, choice
from core.errors import ConfigError
from pruners.pattern import Pattern

SKIP_LAYERS = ("none", "mlp", "self_attn")  # which block of every decoder layer keeps its plain mask


class InputMoments:
    """Per input feature, sums over the calibration tokens of a matrix's input x: row 0 sum x,
    row 1 sum x^2, row 2 the squared deviations of x from the mean of its own window, row 3 the
    number of windows (the same in every column). All are sums, so ranks add theirs; a window is
    one sequence of the batch `add` sees (an input of two dimensions is one window)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.sums = torch.zeros(4, columns, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        windows = x.reshape(-1, *x.shape[-2:]) if x.dim() > 2 else x.unsqueeze(0)
        windows = windows.double()
        deviations = windows - windows.mean(dim=1, keepdim=True)
        self.sums[0] += windows.sum(dim=(0, 1))
        self.sums[1] += windows.pow(2).sum(dim=(0, 1))
        self.sums[2] += deviations.pow(2).sum(dim=(0, 1))
        self.sums[3] += windows.shape[0]
        self.tokens += windows.shape[0] * windows.shape[1]

    def _per_token(self, row: int) -> torch.Tensor:
        if self.tokens == 0:
            raise ValueError("InputMoments: no calibration tokens were added")
        return self.sums[row] / self.tokens

    def mean(self) -> torch.Tensor:
        """E[x_j] over all tokens."""
        return self._per_token(0)

    def variance(self) -> torch.Tensor:
        """The released code's estimator: each window's biased variance (divided by its token
        count, around its own mean), averaged over windows weighted by tokens. It leaves out the
        spread of the window means, so it is at most the pooled variance."""
        return self._per_token(2)

    def squared_norms(self) -> torch.Tensor:
        """||X_j||_2^2, Wanda's column statistic."""
        return self.sums[1]

    def window_sums(self) -> torch.Tensor:
        """sum x_j per window on average: the unit of r_i (and of the update threshold) in the
        released code, E[x_j] times the tokens of a window."""
        return self.sums[0] / self.sums[3].clamp_min(1)


@dataclass(frozen=True)
class DSnoTSettings:
    """DSnoT's options with the released defaults; bad values are one ConfigError naming
    `pruner.dsnot.<name>`."""

    max_cycles: int = 50  # swap cycles per matrix at most
    update_threshold: float = 0.1  # a row stops once |r_i| (per-window sums) is at most this
    pow_of_var_regrowing: float = 1.0  # p in contribution / Var[x_j]^p (0: contribution alone)
    same_sign: bool = False  # unstructured: refuse a swap that flips the sign of r_i (N:M always does)
    skip_layer: str = "mlp"  # the block whose matrices keep their plain mask: none | mlp | self_attn

    def __post_init__(self) -> None:
        values = {
            "max_cycles": as_int("pruner.dsnot.max_cycles", self.max_cycles, 0),
            "update_threshold": as_float("pruner.dsnot.update_threshold", self.update_threshold, 0.0),
            "pow_of_var_regrowing": as_float("pruner.dsnot.pow_of_var_regrowing",
                                             self.pow_of_var_regrowing, 0.0),
            "same_sign": as_bool("pruner.dsnot.same_sign", self.same_sign),
            "skip_layer": choice("pruner.dsnot.skip_layer", self.skip_layer, SKIP_LAYERS),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def applies_to(self, name: str) -> bool:
        """Whether matrix `name` (e.g. `layers.3.mlp.up_proj`) is refined: the released default
        leaves every MLP matrix with its plain mask."""
        return self.skip_layer not in name.split(".")

    def refine_options(self) -> dict[str, Any]:
        """The keyword arguments of `dsnot_refine` these settings give."""
        options = asdict(self)
        del options["skip_layer"]
        return options


DSNOT_DEFAULTS: dict[str, Any] = asdict(DSnoTSettings())


def dsnot_options(given: Mapping[str, Any] | DSnoTSettings | None) -> DSnoTSettings:
    """`pruner.dsnot` validated: unknown keys and bad values are one ConfigError."""
    if isinstance(given, DSnoTSettings):
        return given
    given = dict(given or {})
    unknown = sorted(set(given) - set(DSNOT_DEFAULTS))
    if unknown:
        raise ConfigError(f"pruner.dsnot.{unknown[0]} is not a setting; choose among "
                          f"{', '.join(DSNOT_DEFAULTS)}")
    return DSnoTSettings(**given)


def expected_error(weight: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """r_i = sum_j (1 - keep_ij) W_ij E[x_j] per output row [out] (float64): the expected output
    the mask removes, the quantity DSnoT drives towards zero."""
    removed = torch.where(keep, 0.0, weight.double())
    return removed @ mean.to(removed)


def _queue(key: torch.Tensor, valid: torch.Tensor, largest_first: bool,
           length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the columns of the `valid` entries in the order they are taken (the first `length`),
    and how many there are. Ties: the lower column first, or with `largest_first` the higher one
    (the released code reads that end of one stable ascending sort backwards)."""
    if largest_first:
        order = torch.sort(torch.where(valid, key, -torch.inf), dim=1, stable=True).indices.flip(1)
    else:
        order = torch.sort(torch.where(valid, key, torch.inf), dim=1, stable=True).indices
    return order[:, :length], valid.sum(dim=1).clamp(max=length)


def _take(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor],
          taken: torch.Tensor, use_first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's next column from queue `first` where `use_first`, else from `second` (`taken`
    [rows, 2]: how many each has given), and whether that queue had one left."""
    (a, a_count), (b, b_count) = first, second
    rows = torch.arange(taken.shape[0], device=taken.device)
    at = torch.where(use_first, taken[:, 0], taken[:, 1])
    left = at < torch.where(use_first, a_count, b_count)
    at = at.clamp(max=a.shape[1] - 1)
    return torch.where(use_first, a[rows, at], b[rows, at]), left


def _check_pattern(keep: torch.Tensor, pattern: Pattern) -> None:
    if not pattern.structured:
        return
    columns = keep.shape[1]
    if columns % pattern.m:
        raise ConfigError(f"pattern {pattern}: M={pattern.m} does not divide the input width {columns}")
    per_group = keep.reshape(keep.shape[0], -1, pattern.m).sum(dim=-1)
    if not bool((per_group == pattern.n).all()):
        raise ValueError(f"the keep-mask given to DSnoT does not keep {pattern.n} of every {pattern.m}")


def _cut_in_group(cuttable: torch.Tensor, grown: torch.Tensor,
                  m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """N:M: per row, the kept weight of lowest Wanda score (`cuttable`: inf where there is none to
    take) in the group of M that holds column `grown` (ties: the lower column), and whether one is left."""
    offsets = torch.arange(m, device=grown.device)
    group = (grown // m * m).unsqueeze(1) + offsets
    scores = cuttable.gather(1, group)
    lowest = scores.min(dim=1, keepdim=True).values
    # the lower column of a tie on every device (`min`'s index for a tie is not specified on all)
    first = torch.where(scores == lowest, offsets, m).min(dim=1).values
    return group.gather(1, first.unsqueeze(1)).squeeze(1), lowest.squeeze(1).isfinite()


@torch.no_grad()
def dsnot_refine(weight: torch.Tensor, keep: torch.Tensor, moments: InputMoments, *,
                 pattern: Pattern | str | None = None, max_cycles: int = 50,
                 update_threshold: float = 0.1, pow_of_var_regrowing: float = 1.0,
                 same_sign: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The refined keep-mask (bool, the shape of `weight` [out, in]) and notes: cycles with a swap,
    swaps made, and the mean |r_i| per token before and after. Every row keeps as many weights as
    `keep` gives it; with an N:M `pattern`, every group of M keeps its N. `update_threshold` is in
    the released code's unit, r_i summed over one window (`InputMoments.window_sums`)."""
    pattern = Pattern.parse(pattern or "unstructured")
    keep = keep.to(device=weight.device, dtype=torch.bool)
    if weight.dim() != 2 or keep.shape != weight.shape:
        raise ValueError(f"keep {tuple(keep.shape)} and weight {tuple(weight.shape)}: need one 2-D shape")
    _check_pattern(keep, pattern)
    device = weight.device
    mean = moments.mean().to(device)
    contribution = weight.double() * moments.window_sums().to(device)
    growth = contribution
    if pow_of_var_regrowing:
        growth = contribution / moments.variance().to(device).pow(pow_of_var_regrowing)
    wanda = weight.double().abs() * moments.squared_norms().to(device).sqrt()
    length = min(max_cycles, weight.shape[1])
    grow = (_queue(growth, ~keep & (contribution > 0), True, length),
            _queue(growth, ~keep & (contribution < 0), False, length))
    cut = (_queue(wanda, keep & (contribution < 0), False, length),
           _queue(wanda, keep & (contribution > 0), False, length))
    cuttable = torch.where(keep, wanda, torch.inf)

    refined = keep.clone()
    error = torch.where(keep, 0.0, contribution).sum(dim=1)
    sign = error.sign()
    rows = torch.arange(weight.shape[0], device=device)
    taken = torch.zeros(weight.shape[0], 4, dtype=torch.long, device=device)  # queues' read positions
    cycles = swaps = 0
    for _ in range(max_cycles):
        up = error > 0  # r_i > 0: grow a positive contribution, cut a negative one
        grown, ok = _take(*grow, taken[:, :2], up)
        if pattern.structured:
            cutting, has = _cut_in_group(cuttable, grown, pattern.m)
        else:
            cutting, has = _take(*cut, taken[:, 2:], up)
        after = error + contribution[rows, cutting] - contribution[rows, grown]
        ok &= has & (error.abs() > update_threshold)
        if same_sign or pattern.structured:
            ok &= after.sign() == sign
        # a row refused now is refused in every later cycle (nothing about it changes), as the
        # released code stops it for good
        if not bool(ok.any()):
            break
        cycles += 1
        swaps += int(ok.sum())
        refined[rows[ok], grown[ok]] = True
        refined[rows[ok], cutting[ok]] = False
        cuttable[rows[ok], cutting[ok]] = torch.inf
        error = torch.where(ok, after, error)
        side = (~up).long()
        taken[rows, side] += ok.long()
        taken[rows, 2 + side] += ok.long()
    notes = {"cycles": cycles, "swaps": swaps,
             "error_before": float(expected_error(weight, keep, mean).abs().mean()),
             "error_after": float(expected_error(weight, refined, mean).abs().mean())}
    return refined, notes
