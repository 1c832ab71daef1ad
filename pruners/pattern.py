"""The sparsity pattern of a cell, parsed once: `unstructured` or `N:M` (in every group of M
consecutive input weights of a row, N are kept)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import ConfigError


def check_sparsity(sparsity: object) -> float:
    """A sparsity target as a float in [0, 1), or one clear error naming the bad value."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"sparsity={sparsity!r} is outside [0, 1); e.g. sparsity=0.5")
    return value


@dataclass(frozen=True)
class Pattern:
    n: int = 0  # kept per group (0: unstructured)
    m: int = 0  # group size

    @classmethod
    def parse(cls, text: str | Pattern) -> Pattern:
        if isinstance(text, Pattern):
            return text
        if text == "unstructured":
            return cls()
        parts = str(text).split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            n, m = int(parts[0]), int(parts[1])
            if 0 < n < m:
                return cls(n, m)
        raise ConfigError(
            f"pattern={text!r} is not valid; use 'unstructured' or 'N:M' with 0 < N < M (e.g. 2:4, 4:8)")

    @property
    def structured(self) -> bool:
        return self.m > 0

    def sparsity(self, requested: float) -> float:
        """The sparsity this pattern gives: N:M fixes it at 1 - N/M, whatever was asked."""
        return 1.0 - self.n / self.m if self.structured else requested

    def check_widths(self, in_features: Mapping[str, int]) -> None:
        """Every pruned matrix's rows must split into whole groups of M inputs (the model's
        widths, from its config): else the mask fails after the model loads."""
        if not self.structured:
            return
        for name, width in in_features.items():
            if width % self.m:
                widths = sorted(set(in_features.values()))
                fits = [f"{n}:{m}" for n, m in ((2, 4), (4, 8)) if all(w % m == 0 for w in widths)]
                raise ConfigError(
                    f"pattern={self}: M={self.m} does not divide the input width {width} of {name} "
                    f"(the model's widths: {widths}); use an M that divides every width"
                    + (f", e.g. {' or '.join(fits)}" if fits else ", or pattern=unstructured"))

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"
