"""Grids of tiny-model cells through run.py: the presets expand to unique cells, a grid killed
with SIGKILL mid-cell resumes with every record exactly once, a failed cell is one line and a
non-zero exit (never a traceback), Ctrl-C stops a grid with one line, the joblib and
submitit_local launchers run cells, and W&B logs offline without credentials (and not at all
with logger=none)."""

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
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from core.errors import ConfigError
from core.paths import CONF_DIR, PROJECT_ROOT
from hydra_plugins.dpruner_bench_grid import failure_lines, union_of_grids

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
           timeout: int = 300, returncode: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(command(tmp, results, *overrides), cwd=PROJECT_ROOT, env=env or environment(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == returncode, result.stdout[-2000:] + result.stderr[-3000:]
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
    from bench.cell import validate

    jobs = expand(preset)
    keys, coordinates = set(), set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            cfg = compose(config_name="config", overrides=job)
            cell = validate(cfg)
            config = cell.config
            keys.add(cell.key)
            calib = (config.get("calib") or {}).get("source")
            coordinates.add((cell.pruner.name, cfg.domain.name, config["sparsity"], config["pattern"], calib))
            assert cfg.logger.group.startswith(f"{preset}-"), cfg.logger.group
            assert config["pattern"] == "unstructured" or config["sparsity"] == 0.5
    assert len(jobs) == len(keys) == len(coordinates) == cells
    assert {c[0] for c in coordinates} == {"dense", "magnitude", "wanda", "sparsegpt", "dpruner"}
    assert {c[1] for c in coordinates} == {"healthcare", "legal"}


def test_seeds_preset_draws_three_calibration_samples_per_method() -> None:
    from bench.cell import validate

    jobs = expand("seeds")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cells = [validate(compose(config_name="config", overrides=job)) for job in jobs]
    assert len(jobs) == len({c.key for c in cells}) == 18
    methods, domains = ("wanda", "sparsegpt", "dpruner"), ("healthcare", "legal")
    assert {(c.pruner.name, c.config["domain"]["name"], c.config["seed"]) for c in cells} == {
        (m, d, s) for m in methods for d in domains for s in (0, 1, 2)}
    assert {c.config["sparsity"] for c in cells} == {0.5}


def test_high_sparsity_preset_cells() -> None:
    """60 distinct cells (3 sparsities x 2 allocations x 2 domains x 5 series), of which the 8 at
    50 % uniform with general or mixed calibration are leaderboard_cpu's own cells."""
    from bench.cell import validate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cells = [validate(compose(config_name="config", overrides=job))
                 for job in expand("high_sparsity")]
        shared = {validate(compose(config_name="config", overrides=job)).key
                  for job in expand("leaderboard_cpu")}
    assert len(cells) == len({c.key for c in cells}) == 60
    assert len({c.key for c in cells} & shared) == 8
    assert {c.pruner.allocation.kind for c in cells} == {"uniform", "owl"}
    rebuilt = [c for c in cells if c.pruner.name == "dpruner" and c.pruner.follow.reconstruct == "mixed"]
    assert len(rebuilt) == 12 and all(c.requests["reconstruct"].source == "mixed" for c in rebuilt)


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


# ------------------------------------------------------------------------------ failed cells

def job(overrides: list[str], error: BaseException | None, output_dir: Path) -> JobReturn:
    result = JobReturn(overrides=overrides, status=JobStatus.FAILED if error else JobStatus.COMPLETED,
                       hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(output_dir)}}}))
    result.return_value = error
    return result


def test_failed_cells_are_named_by_what_sets_them_apart(tmp_path: Path) -> None:
    """A ConfigError is its message; any other error gets its type and a kept traceback."""
    try:
        raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")
    except RuntimeError as err:
        bug = err
    jobs = [["pruner=wanda", f"sparsity={s}", "eval=smoke"] for s in (0.5, 0.6, 1.5)]
    returns = [job(jobs[0], None, tmp_path), job(jobs[1], bug, tmp_path),
               job(jobs[2], ConfigError("sparsity=1.5 is outside [0, 1)"), tmp_path)]
    assert failure_lines(returns, jobs) == [
        f"failed: sparsity=0.6 — RuntimeError: CUDA out of memory (traceback: {tmp_path / 'traceback.txt'})",
        "failed: sparsity=1.5 — sparsity=1.5 is outside [0, 1)"]
    kept = (tmp_path / "traceback.txt").read_text(encoding="utf-8")
    assert kept.startswith("Traceback") and "Tried to allocate 2 GiB" in kept
    assert failure_lines(returns[2:], jobs[2:]) == [  # one cell: every override names it
        "failed: pruner=wanda sparsity=1.5 eval=smoke — sparsity=1.5 is outside [0, 1)"]


@pytest.mark.slow
def test_failed_cell_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    """A plain `-m` grid (no sweeper chosen): the bad cell fails before its model loads, the
    good one is recorded, and the grid ends in one line per failed cell, a count and exit 1."""
    results = tmp_path / "runs"
    result = run_py(tmp_path, results, "-m", "pruner=magnitude", "sparsity=0.5,1.5", "logger=none",
                    returncode=1)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].startswith("failed: sparsity=1.5 — "), result.stderr[-3000:]
    assert "sparsity=1.5" in failed[0].split(" — ", 1)[1]
    assert result.stderr.rstrip().endswith("grid: 2 cells, 1 failed")
    assert set(records(results)) == {("magnitude", 0.5, "unstructured")}


@pytest.mark.slow
def test_ctrl_c_stops_the_grid_in_one_line(tmp_path: Path) -> None:
    """SIGINT while the second cell runs: the first cell's record stays, nothing half-written,
    one `interrupted:` line, exit 130, no traceback."""
    results = tmp_path / "runs"
    args = command(tmp_path, results, "-m", "pruner=magnitude,wanda", "logger=none")
    proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if "#1 :" in line:  # Hydra launches the second cell
                break
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.rstrip().endswith("interrupted: grid stopped after 1 of 2 cells")
    assert set(records(results)) == {("magnitude", 0.5, "unstructured")}
    no_leftovers(results)


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


@pytest.mark.slow
def test_submitit_with_two_tasks_runs_one_cell_on_two_processes(tmp_path: Path) -> None:
    results = tmp_path / "runs"
    run_py(tmp_path, results, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
           "hydra.launcher.tasks_per_node=2", "pruner=wanda", "logger=none")
    (record,) = records(results).values()
    assert record["world"] == {"size": 2, "backend": "gloo"}
    assert record["sparsity"]["achieved"] == 0.5
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



@pytest.mark.slow
def test_mask_update_preset_is_the_whole_factorial() -> None:
    """Every mask (6) x update (none, mixed) x setting (50 %, 70 %, 2:4) x domain, beside
    SparseGPT on general and mixed windows: 84 cells, each its own key, each naming its choices."""
    from bench.cell import validate

    jobs = expand("mask_update")
    seen, keys = set(), set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            cfg = compose(config_name="config", overrides=job)
            cell = validate(cfg)
            keys.add(cell.key)
            choices = cell.pruner.describe()
            seen.add((choices["mask"], choices["refine"], choices["update"], cfg.domain.name,
                      cell.config["sparsity"], cell.config["pattern"],
                      cell.pruner.calibration_source(cell.requests)))

    def source(mask: str, refine: str, update: str) -> str | None:
        """The calib axis: the mask's general windows, else the update's (magnitude and D-Pruner
        read none of the calib group's for their masks)."""
        if mask not in ("magnitude", "dpruner") or refine == "dsnot":
            return "general"
        return None if update == "none" else "mixed"

    masks = [("magnitude", "none"), ("wanda", "none"), ("ria", "none"), ("dpruner", "none"),
             ("wanda", "dsnot"), ("dpruner", "dsnot")]
    settings = [(0.5, "unstructured"), (0.7, "unstructured"), (0.5, "2:4")]
    domains = ("healthcare", "legal")
    expected = {(mask, refine, update, domain, *setting, source(mask, refine, update))
                for mask, refine in masks for update in ("none", "obs(mixed)") for domain in domains
                for setting in settings}
    expected |= {("sparsegpt", "none", "joint", domain, *setting, calib) for domain in domains
                 for setting in settings for calib in ("general", "mixed")}
    assert len(jobs) == len(keys) == len(seen) == 84
    assert seen == expected
