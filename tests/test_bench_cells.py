"""Benchmarks build their cells as run.py does: through `bench.cell.validate`, so no cell setting
(allocation, pattern, driver, a method option) can be dropped on the way to a timed prune."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from bench.cell import validate
from bench.defaults import compose_config
from bench.perf import dpruner_lambda, gpu_check
from bench.perf.cell import bench_cell, pruner_overrides
from core.errors import ConfigError
from pruners import REGISTRY, Pruner

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model=tiny-llama", "eval=smoke", "calib.nsamples=4", "calib.seqlen=32", "driver.progress=false"]
BUILDERS = {"from_config", "build", "build_pruner", "build_calibration",  # run.py's own steps,
            *(cls.__name__ for cls in REGISTRY.values())}  # and every method's constructor


def settings(pruner: Pruner) -> str:
    """Everything a built pruner holds, as text (nested settings objects by their fields)."""
    return json.dumps(vars(pruner), default=lambda o: getattr(o, "__dict__", str(o)), sort_keys=True)


def built(build: Any, overrides: list[str]) -> tuple[str, Any, str] | str:
    """What `build` makes of the overrides: the pruner's settings, requests and key, or the error."""
    try:
        cell = build([*TINY, *overrides])
    except ConfigError as err:
        return f"error: {err}"
    return settings(cell.pruner), cell.requests, cell.key


def by_benchmark(overrides: list[str]) -> Any:
    return bench_cell(overrides)[1]


def by_run(overrides: list[str]) -> Any:
    return validate(compose_config(overrides))


def test_no_benchmark_builds_a_pruner_or_windows_of_its_own() -> None:
    """Only bench/cell.py calls the builders or a method's constructor; a benchmark gets its cell
    from `bench_cell`."""
    for path in sorted((ROOT / "bench" / "perf").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                assert name not in BUILDERS, f"{path.name}:{node.lineno} calls {name}; use bench_cell"


BENCH_SERIES = [
    *gpu_check.SERIES.values(),
    *(pruner_overrides(m) for m in ("magnitude", "wanda", "sparsegpt", "dpruner", "wanda+dsnot",
                                    "magnitude+obs")),  # speed, dpruner_cost
    *(["pruner=dpruner", *(f"pruner.{k}={json.dumps(v)}" for k, v in options.items())]
      for label in dpruner_lambda.DEFAULT_CELLS if (options := dpruner_lambda.cell_options(label))),
]


@pytest.mark.parametrize("overrides", BENCH_SERIES, ids=" ".join)
def test_every_benchmark_series_is_the_cell_run_py_runs(overrides: list[str]) -> None:
    assert built(by_benchmark, overrides) == built(by_run, overrides)


def test_the_owl_series_is_built_with_owl() -> None:
    """The series that a second builder once ran as uniform Wanda."""
    cell = by_benchmark(gpu_check.SERIES["wanda owl 0.7"] + TINY)
    assert cell.pruner.allocation.kind == "owl" and cell.pruner.sparsity == 0.7


def _leaves(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        elif key != "_target_":
            yield f"{prefix}{key}", value


def _changed(value: Any) -> Any:
    """Another valid-looking value of the same type (None where there is no obvious one)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value * 2
    if isinstance(value, float):
        return value / 2 if value else 0.25
    return None


def variants(base: list[str]) -> Iterator[str]:
    """One override per leaf of the pruner, driver, OWL and target settings, each a changed value."""
    cfg = OmegaConf.to_container(compose_config([*TINY, *base]), resolve=True)
    for group in ("pruner", "driver", "owl"):
        for key, value in _leaves(cfg[group], f"{group}."):
            if (new := _changed(value)) is not None:
                yield f"{key}={json.dumps(new)}"
    yield from ("sparsity=0.6", "pattern=2:4", "allocation=owl")


@pytest.mark.parametrize("base", [["pruner=dpruner"], ["pruner=wanda"], ["pruner=sparsegpt"],
                                  ["pruner=magnitude"]], ids=" ".join)
def test_every_setting_reaches_the_benchmarks_pruner(base: list[str]) -> None:
    """For every key of the composed config the pruner reads, a changed value is built the same
    way by a benchmark and by run.py, and it changes the pruner (no key silently ignored)."""
    reference = built(by_run, base)
    for override in variants(base):
        mine, theirs = built(by_benchmark, [*base, override]), built(by_run, [*base, override])
        assert mine == theirs, override
        if not isinstance(mine, str):
            assert mine[0] != reference[0], f"{override} left the pruner unchanged"
