"""D-Pruner as a package: validated options (options.py), the general pass with its cache
(general.py), the domain pass (domain.py), the pure formulas (formulas.py) and the pruner that
runs the three stages and applies the mask (pruner.py)."""

from pruners.dpruner.pruner import DPruner

__all__ = ["DPruner"]
