"""Layer-wise sparsity allocation: how a cell's target sparsity is spread over the decoder layers.

`uniform` gives every pruned matrix the target. `owl` is OWL, Outlier Weighed Layerwise sparsity
(Yin et al., arXiv 2310.05175): layers whose Wanda scores hold more outliers keep more weights.

1. Per decoder layer l, Wanda's scores A_ij = |W_ij| * ||X_j||_2 of every matrix it prunes,
   X being that matrix's inputs on the calibration windows through the dense model.
2. The layer's outlier ratio D_l: the fraction of its scores above M times its mean score.
3. The ratios are mapped linearly onto a spread of 2 lambda (most outliers: lowest sparsity),
   then shifted so that the mean sparsity over the layers, weighted by their number of pruned
   weights, is the target exactly; a layer that would leave [target - lambda, target + lambda]
   is held at the band's edge and the shift is solved again (the paper's rule: the band, and the
   target as the mean). Where no layer meets the band this is exactly OWL's released formula
   (keep ratio (D - min D) / (max D - min D) * 2 lambda, re-centred on 1 - target).

Every layer's ratio is needed before the first layer is pruned, while the layer-wise methods
feed each layer the pruned outputs of the one before; so the ratios come from one dense
statistics sweep of the shared driver (Wanda's column statistic, no second catcher) ahead of
pruning, as in OWL's own code."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.checks import as_float, choice
from core.errors import ConfigError
from pruners.driver import LayerPass, run_layerwise
from pruners.pattern import Pattern
from pruners.scores import ColumnSquares, wanda_score
from pruners.settings import DriverSettings

ALLOCATION_KINDS = ("uniform", "owl")


@dataclass(frozen=True)
class Allocation:
    """The `allocation` value and the `owl` group, validated."""

    kind: str = "uniform"
    threshold: float = 5.0  # M: a score is an outlier above M x its layer's mean score
    lambda_: float = 0.08  # layer sparsities stay within target +- lambda_

    def __post_init__(self) -> None:
        choice("allocation", self.kind, ALLOCATION_KINDS)
        object.__setattr__(self, "threshold", as_float("owl.threshold", self.threshold, 0.0, open_low=True))
        object.__setattr__(self, "lambda_", as_float("owl.lambda_", self.lambda_, 0.0, 1.0, open_high=True))

    @classmethod
    def of(cls, kind: str | None, owl: Mapping[str, Any] | None = None) -> Allocation:
        owl = dict(owl or {})
        unknown = set(owl) - {"threshold", "lambda_"}
        if unknown:
            raise ConfigError(f"owl: unknown setting(s) {sorted(unknown)}; the group has threshold, lambda_")
        return cls(kind or "uniform", **owl)

    @property
    def owl(self) -> bool:
        return self.kind == "owl"

    def check(self, sparsity: float, pattern: Pattern) -> None:
        """OWL needs free per-layer sparsities whose band stays inside [0, 1)."""
        if not self.owl:
            return
        if pattern.structured:
            raise ConfigError(f"allocation=owl needs pattern=unstructured ({pattern} fixes every "
                              "layer's sparsity at 1 - N/M)")
        if sparsity - self.lambda_ < 0 or sparsity + self.lambda_ >= 1:
            raise ConfigError(f"owl.lambda_={self.lambda_} puts layer sparsities outside [0, 1) at "
                              f"sparsity={sparsity}; the band needs lambda_ <= sparsity and "
                              "sparsity + lambda_ < 1")


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float) -> float:
    """The fraction of all scores (one layer's matrices together) above threshold x their mean."""
    total = sum(float(s.double().sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    limit = threshold * total / count
    return sum(int((s.double() > limit).sum()) for s in scores) / count


def owl_sparsities(ratios: Sequence[float], target: float, lambda_: float,
                   sizes: Sequence[int] | None = None) -> list[float]:
    """Per-layer sparsities from outlier ratios (see the module docstring): mean (weighted by
    `sizes`) equal to `target`, each within target +- lambda_, fewer outliers -> sparser."""
    r = torch.tensor(ratios, dtype=torch.float64)
    w = torch.ones_like(r) if sizes is None else torch.tensor(sizes, dtype=torch.float64)
    spread = r.max() - r.min()
    if lambda_ == 0 or spread == 0:
        return [float(target)] * len(ratios)
    offset = (r - r.min()) / spread * (2 * lambda_)  # 0 .. 2 lambda, most outliers highest
    low, high = target - lambda_, target + lambda_

    def sparsities(shift: float) -> torch.Tensor:
        return (target - offset + shift).clamp(low, high)

    def mean(shift: float) -> float:
        return float((sparsities(shift) * w).sum() / w.sum())

    a, b = float(offset.min()) - lambda_, float(offset.max()) + lambda_  # mean(a) = low, mean(b) = high
    for _ in range(200):  # mean() is monotone in the shift: bisection to float precision
        mid = (a + b) / 2
        if mean(mid) < target:
            a = mid
        else:
            b = mid
    return [float(s) for s in sparsities((a + b) / 2)]


class OutlierRatios(LayerPass):
    """Layer pass of the statistics sweep: Wanda's column statistic per matrix, turned into
    each layer's outlier ratio when the layer ends; weights are left unchanged."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.ratios: list[float] = []
        self.sizes: list[int] = []
        self._scores: list[torch.Tensor] = []

    def make_stats(self, columns: int, device: torch.device) -> ColumnSquares:
        return ColumnSquares(columns, device)

    def finish_matrix(self, name: str, weight: torch.Tensor, stats: ColumnSquares) -> tuple[None, dict]:
        self._scores.append(wanda_score(weight, stats.norms()))
        return None, {}

    def finish_layer(self, index: int) -> None:
        self.ratios.append(outlier_ratio(self._scores, self.threshold))
        self.sizes.append(sum(s.numel() for s in self._scores))
        self._scores = []


@dataclass
class LayerSparsities:
    """The sparsity of every decoder layer's matrices, and how it was decided (for the record)."""

    allocation: Allocation
    target: float
    sparsities: list[float] = field(default_factory=list)  # empty: uniform
    ratios: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, name: str) -> float:
        """The sparsity of a matrix named `layers.<i>.<...>`."""
        if not self.sparsities:
            return self.target
        return self.sparsities[int(name.split(".")[1])]

    def report(self) -> dict[str, Any]:
        if not self.allocation.owl:
            return {"kind": "uniform"}
        return {"kind": "owl", "threshold": self.allocation.threshold, "lambda_": self.allocation.lambda_,
                "seconds": self.seconds, "outlier_ratios": self.ratios, "sparsities": self.sparsities}


def allocate(model: nn.Module, ids: torch.Tensor | None, allocation: Allocation, target: float,
             driver: DriverSettings, device: torch.device) -> LayerSparsities:
    """Per-layer sparsities for `model` (uniform: no work at all)."""
    result = LayerSparsities(allocation, target)
    if not allocation.owl:
        return result
    if ids is None:
        raise ConfigError("allocation=owl needs calibration windows (calibration.ids)")
    start = time.perf_counter()
    method = OutlierRatios(allocation.threshold)  # changes no weight: every layer sees dense inputs
    run_layerwise(model, ids, method, driver, device, label="owl ratios")
    result.ratios = method.ratios
    result.sparsities = owl_sparsities(method.ratios, target, allocation.lambda_, method.sizes)
    result.seconds = time.perf_counter() - start
    return result
