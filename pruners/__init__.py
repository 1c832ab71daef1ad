"""Pruning methods. Each method is one module registered by name (`pruner=<name>`)."""

from pruners import dense, dpruner, magnitude, sparsegpt, wanda  # noqa: F401  (registers the methods)
from pruners.base import REGISTRY, DriverSettings, MatrixReport, Pruner, build, from_config, register

__all__ = ["REGISTRY", "DriverSettings", "MatrixReport", "Pruner", "build", "from_config", "register"]
