"""pyproject's dependencies are what the code imports: every third-party import is declared (not
left to arrive through another package), and every declared package is imported, or is one of
the few loaded by name at run time (listed below with where)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["core", "pruners", "evals", "bench", "hydra_plugins", "run.py"]
OWN = {"core", "pruners", "evals", "bench", "hydra_plugins", "run"}
# Declared, never imported by name: each is loaded by another package at run time.
LOADED_BY_NAME = {
    "gguf": "transformers reads the embedded model's GGUF file through it (core/gguf_wheels.py, gguf_file=)",
    "hydra-joblib-launcher": "Hydra's launcher plugin for hydra/launcher=joblib grids",
    "hydra-submitit-launcher": "Hydra's launcher plugins for hydra/launcher=submitit_local|submitit_slurm",
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {normalized(re.match(r"[A-Za-z0-9._-]+", spec).group()) for spec in project["dependencies"]}


def imported_modules() -> dict[str, str]:
    """Top-level module -> the first file importing it, for every absolute import in the code."""
    files: list[Path] = []
    for source in SOURCES:
        path = ROOT / source
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    modules: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                modules.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return {module: where for module, where in modules.items()
            if module not in sys.stdlib_module_names and module not in OWN and module != "__future__"}


def imported_distributions() -> dict[str, set[str]]:
    """Each third-party module imported -> the installed distributions that provide it."""
    providers = importlib.metadata.packages_distributions()
    return {module: {normalized(name) for name in providers.get(module, [])} for module in imported_modules()}


def test_every_imported_package_is_declared() -> None:
    need = declared()
    modules = imported_modules()
    undeclared = {f"{module} ({modules[module]}, from {sorted(dists) or 'no installed distribution'})"
                  for module, dists in imported_distributions().items() if not dists & need}
    assert undeclared == set(), f"add to pyproject's dependencies: {sorted(undeclared)}"


def test_every_declared_package_is_imported_or_loaded_by_name() -> None:
    used = set().union(*imported_distributions().values())
    unused = declared() - used - set(LOADED_BY_NAME)
    assert unused == set(), f"declared but never imported: {sorted(unused)}"


def test_packages_loaded_by_name_are_declared_and_not_imported() -> None:
    used = set().union(*imported_distributions().values())
    assert set(LOADED_BY_NAME) <= declared()
    assert set(LOADED_BY_NAME) & used == set()  # imported now: drop it from LOADED_BY_NAME
