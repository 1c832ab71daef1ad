"""Typed reads of config values: a wrong type or range is one ConfigError naming the setting,
the bad value and what is allowed, never a traceback from deep inside a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from core.errors import ConfigError


def as_int(key: str, value: Any, minimum: int | None = None) -> int:
    try:
        number = int(value)
        if isinstance(value, float | str) and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must be a whole number") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key}={value!r} must be >= {minimum}")
    return number


def as_float(key: str, value: Any, low: float | None = None, high: float | None = None,
             *, open_low: bool = False, open_high: bool = False) -> float:
    """A finite float, optionally inside [low, high] (`open_low`/`open_high` exclude an end)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    below = low is not None and (number <= low if open_low else number < low)
    above = high is not None and (number >= high if open_high else number > high)
    if not math.isfinite(number) or below or above:
        span = ""
        if low is not None or high is not None:
            left, right = ("(" if open_low else "["), (")" if open_high else "]")
            span = f" in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{key}={value!r} must be a number{span}")
    return number


def as_bool(key: str, value: Any) -> bool:
    """true or false, never a string that Python would read as true ("maybe", "no")."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def choice(key: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}; choose one of {list(allowed)}")
    return str(value)
