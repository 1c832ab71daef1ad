"""Pruning methods. Each method is one module registered by name (`pruner=<name>`)."""

from pruners import dense, dpruner, magnitude, sparsegpt, wanda  # noqa: F401  (registers the methods)
from pruners.base import REGISTRY, Calibration, DriverSettings, Pruner, build, register

__all__ = ["REGISTRY", "Calibration", "DriverSettings", "Pruner", "build", "register"]
