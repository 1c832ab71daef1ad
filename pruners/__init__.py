"""Pruning methods. Each method is one module registered by name (`pruner=<name>`)."""

from pruners import dense, dpruner, magnitude, ria, sparsegpt, wanda  # noqa: F401  (registers the methods)
from pruners.allocation import Allocation
from pruners.base import REGISTRY, Pruner, build, from_config, register
from pruners.settings import DriverSettings, MatrixReport

__all__ = ["REGISTRY", "Allocation", "DriverSettings", "MatrixReport", "Pruner", "build", "from_config",
           "register"]
