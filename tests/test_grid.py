"""Grids of tiny-model cells through run.py: the presets expand to unique cells, a grid killed
with SIGKILL mid-cell resumes with every record exactly once, the joblib and submitit_local
launchers run cells, and W&B logs offline without credentials (and not at all with logger=none)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from core.paths import CONF_DIR, PROJECT_ROOT
from hydra_plugins.dpruner_bench_grid import union_of_grids

TINY = ["model=tiny-llama", "eval=smoke", "calib.nsamples=2", "calib.seqlen=64", "driver.progress=false"]
REAL_CACHE = os.environ.get("DPB_CACHE_DIR", str(Path("~/.cache/dpruner-bench").expanduser()))


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_SILENT="true", PYTHONUNBUFFERED="1",
               DPB_CACHE_DIR=REAL_CACHE)  # the tiny model borrows the converted tokenizer
    env.update(extra)
    return env


def command(tmp: Path, results: Path, *overrides: str) -> list[str]:
    return [sys.executable, "run.py", *overrides, *TINY, f"results.dir={results}",
            f"hydra.sweep.dir={tmp / 'sweep'}", f"hydra.run.dir={tmp / 'run'}"]


def run_py(tmp: Path, results: Path, *overrides: str, env: dict[str, str] | None = None,
           timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command(tmp, results, *overrides), cwd=PROJECT_ROOT, env=env or environment(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def records(results: Path) -> dict[tuple, dict]:
    """{(pruner, sparsity, pattern): record}, asserting that no cell has two records."""
    found: dict[tuple, dict] = {}
    for path in results.glob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        cell = record["cell"]
        coordinates = (cell["pruner"], cell["sparsity"], cell["pattern"])
        assert coordinates not in found, f"two records for {coordinates}"
        assert path.stem == record["key"] and record["status"] == "done"
        found[coordinates] = record
    return found


def no_leftovers(results: Path) -> None:
    """Nothing half-written or set aside: only finished records."""
    strays = [p.name for p in results.iterdir() if p.is_file() and not p.name.endswith(".json")]
    assert strays == [], strays
    assert not list(results.glob(".*")), list(results.glob(".*"))


# ------------------------------------------------------------------------------------ presets

def expand(preset: str, *extra: str) -> list[list[str]]:
    sweeper = OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml").hydra.sweeper
    parser = OverridesParser.create()
    shared = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    overrides = parser.parse_overrides([*shared, f"+experiment={preset}", *extra])
    return union_of_grids(parser, OmegaConf.to_container(sweeper.grids), overrides)


@pytest.mark.parametrize(("preset", "cells"), [("leaderboard", 42), ("leaderboard_cpu", 22)])
def test_presets_are_unique_cells(preset: str, cells: int) -> None:
    """Every job composes and validates as run.py sees it, has its own record key (no cell runs
    twice) and a W&B group."""
    import run

    jobs = expand(preset)
    keys, coordinates = set(), set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            cfg = compose(config_name="config", overrides=job)
            cell = run.validate(cfg)
            config = cell.config
            keys.add(cell.key)
            calib = (config.get("calib") or {}).get("source")
            coordinates.add((cell.pruner.name, cfg.domain.name, config["sparsity"], config["pattern"], calib))
            assert cfg.logger.group.startswith(f"{preset}-"), cfg.logger.group
            assert config["pattern"] == "unstructured" or config["sparsity"] == 0.5
    assert len(jobs) == len(keys) == len(coordinates) == cells
    assert {c[0] for c in coordinates} == {"dense", "magnitude", "wanda", "sparsegpt", "dpruner"}
    assert {c[1] for c in coordinates} == {"healthcare", "legal"}


def test_sparsity_sweep_jobs() -> None:
    jobs = expand("sparsity_sweep")
    assert len(jobs) == 4 * 2 * 8 + 2
    assert sum("pruner=dense" in job for job in jobs) == 2


def test_command_line_narrows_a_preset() -> None:
    jobs = expand("leaderboard_cpu", "domain=legal", "eval=smoke")
    assert all("domain=legal" in job and "eval=smoke" in job and "eval=quick" not in job for job in jobs)
    assert len(jobs) == 11


# ------------------------------------------------------------------------------ resume, kill

@pytest.mark.slow
def test_grid_killed_mid_cell_resumes_with_every_record_once(tmp_path: Path) -> None:
    """Also: with logger=none nothing of W&B appears (HOME is the test folder)."""
    results = tmp_path / "runs"
    (tmp_path / "home").mkdir()
    env = environment(HOME=str(tmp_path / "home"))
    grid = ["-m", "pruner=magnitude,wanda", "sparsity=0.5,0.6", "logger=none"]
    # The grid runs its cells in order (magnitude first); kill it once Wanda is pruning.
    args = command(tmp_path, results, *grid)
    args[args.index("driver.progress=false")] = "driver.progress=true"  # the progress bar is the marker
    proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen, deadline = b"", time.monotonic() + 240
    try:
        while b"wanda:" not in seen and time.monotonic() < deadline:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        assert b"wanda:" in seen and proc.poll() is None, seen.decode(errors="replace")[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    before = records(results)
    assert set(before) == {("magnitude", 0.5, "unstructured"), ("magnitude", 0.6, "unstructured")}
    no_leftovers(results)
    stamps = {k: (results / f"{r['key']}.json").stat().st_mtime_ns for k, r in before.items()}

    rerun = run_py(tmp_path, results, *grid, env=env)
    assert rerun.stdout.count("skip: cell") == 2 and rerun.stdout.count("done: ") == 2, rerun.stdout
    after = records(results)
    assert set(after) == {(p, s, "unstructured") for p in ("magnitude", "wanda") for s in (0.5, 0.6)}
    assert len(list(results.glob("*.json"))) == 4
    assert {k: (results / f"{r['key']}.json").stat().st_mtime_ns for k, r in before.items()} == stamps
    no_leftovers(results)
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name.lower()]


# ---------------------------------------------------------------------------------- launchers

@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
])
def test_launcher_runs_a_two_cell_grid(launcher: list[str], tmp_path: Path) -> None:
    results = tmp_path / "runs"
    run_py(tmp_path, results, "-m", *launcher, "pruner=magnitude,wanda", "logger=none")
    assert set(records(results)) == {("magnitude", 0.5, "unstructured"), ("wanda", 0.5, "unstructured")}
    no_leftovers(results)


# ---------------------------------------------------------------------------------------- W&B

@pytest.mark.slow
def test_wandb_offline_without_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = environment(HOME=str(home))  # no WANDB_API_KEY, no WANDB_MODE, no ~/.netrc
    wandb_dir = tmp_path / "wandb"
    run_py(tmp_path, tmp_path / "runs", "pruner=magnitude", "logger=wandb", f"logger.dir={wandb_dir}",
           env=env)
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb")), list(wandb_dir.rglob("*"))[:20]
    assert len(records(tmp_path / "runs")) == 1

