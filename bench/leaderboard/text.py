"""How numbers read in every rendering: a value with the digits its metric deserves, its interval
in the same digits, the spread over seeds, signed differences, and the legend that explains them."""

from __future__ import annotations

from typing import Any

from bench.leaderboard.cells import COST, direction
from bench.leaderboard.seeds import Estimate

NEAR_CHANCE = "≈chance"
MINUS = "\N{MINUS SIGN}"

LEGEND = ("↓ lower is better, ↑ higher is better. A value reads `value [low, high]`: its 95 % interval "
          "over the scored items (bootstrap), where the record has one. A row of several seeds shows "
          "their mean, an interval holding item and seed variation, and `(lowest–highest)` seed. "
          "Bold: the best pruned method in the column, alone only where its paired difference to the "
          "runner-up (same items) excludes zero; otherwise every method whose difference to the best "
          "includes zero shares it. `≈chance`: the interval does not clear the better of chance and "
          "majority. Dense is the unpruned reference, never bold. An empty cell was not run or not "
          "measured. `prune s`: pruning wall time in seconds.")


def header_name(metric: str) -> str:
    """A column header: the metric without its scope, with the arrow of the better direction."""
    if metric == COST:
        return "prune s"
    arrow = {-1: " ↓", 1: " ↑"}.get(direction(metric), "")
    return " ".join(metric.split("/")[1:]) + arrow


def fmt(column: str, value: Any) -> str:
    """A value as the tables show it: perplexities to 2 places, scores to 3, seconds to 1, a
    missing value as an empty cell (never a zero)."""
    if value is None:
        return ""
    if not isinstance(value, int | float):
        return str(value)
    if column == COST:
        return f"{value:.1f}"
    return f"{value:.2f}" if column.endswith("/ppl") else f"{value:.3f}"


def signed(column: str, value: float) -> str:
    """A difference with its sign (+, or a true minus), in the column's digits."""
    text = fmt(column, abs(value))
    return f"+{text}" if value >= 0 else f"{MINUS}{text}"


def parts(column: str, estimate: Estimate | None, sign: bool = False) -> tuple[str, str]:
    """(the value, what follows it: ` [low, high]` and a seed spread `(lo–hi)`), empty where
    absent; `sign` writes differences (+/−)."""
    if estimate is None:
        return "", ""
    show = (lambda v: signed(column, v)) if sign else (lambda v: fmt(column, v))
    rest = ""
    if estimate.interval is not None:
        rest += f" [{show(estimate.interval[0])}, {show(estimate.interval[1])}]"
    if estimate.spread is not None:
        rest += f" ({show(estimate.spread[0])}–{show(estimate.spread[1])})"
    return show(estimate.value), rest
