"""The result store: one JSON record per cell, named by a hash of what the cell computes,
written atomically so a killed cell leaves no partial record and a rerun can skip finished ones.

Record layout (RECORD_VERSION 3; version 2 had no `metrics_ci` / `evidence`; `allocation` and
`budget` came later within version 3: without `allocation` a cell is uniform, without `budget`
the leaderboard derives it from the config, docs/results.md):
  key, version, created, status ("done")
  cell: {model, pruner, domain, sparsity, pattern, calib, allocation, seed, eval, mask, refine,
        update}   -- the grid coordinates; `sparsity` is the target (N:M: 1 - N/M; under OWL the
        mean over the pruned weights), `calib` the baselines' source; `mask` the method that chose
        the mask, `refine` none | dsnot, `update` none | obs(<source>) | joint (SparseGPT); older
        records have no mask/refine/update
  config: the resolved config, normalised (see `cell_config`), with `inputs`: {data file:
          sha256 prefix} of every file the cell read (so edited data gives a new key)
  metrics: flat {"<domain|general>/<task>/<metric>": float}
  metrics_ci: {metric: [low, high]}, the 95 % bootstrap interval over items / windows
  evidence: {"<domain|general>/<task>": per-item arrays} (bench/results/evidence.py)
  sparsity: {achieved (over the pruned matrices), model (over all parameters), per_matrix}
  prune: {seconds, stages (D-Pruner: seconds and peak memory of general / domain / mask; with a
          follow-up: refine / reconstruct seconds),
          matrices: [per-matrix report: name, shape, error, seconds, peak_mem_mb, notes]}
  allocation: {kind: uniform} or {kind: owl, threshold, lambda_, seconds, outlier_ratios,
              sparsities}: the per-layer sparsities and the outlier ratios they came from
  eval: {seconds, details}
  memory: {peak_rss_mb, peak_cuda_mb}
  budget: {tokens: {general, domain}, windows: {slot: {source, windows, seqlen, domain_windows,
          excluded (domain.calib.exclude_evaluated: items left out per calibration source)}},
          passes: {general, domain}, optimizer_steps, prune_seconds, peak_memory_mb, derived}:
          what the calibration consumed (`budget_block`)
  world: {size, backend}: the processes the cell ran on (1, null: one process; how it ran, not
         what it computes, so not part of the key)
  versions, git, samples (generated texts), masks (path relative to the record, or null),
  saved_model (folder, only with save_model=true)"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.results.evidence import metric_intervals, metric_samples
from core.errors import ConfigError
from core.files import write_atomic
from core.paths import PROJECT_ROOT

if TYPE_CHECKING:  # the record only reads its fields; the leaderboard must not import lm-eval
    from evals.suite import EvalResult

RECORD_VERSION = 3
PACKAGES = ("torch", "transformers", "lm_eval", "hydra-core", "wandb", "datasets", "dpruner-bench")

# Settings that change where things go or how they are shown, never what a cell computes.
NOT_IN_KEY = (
    ("logger",), ("results",), ("force",), ("data", "root"), ("model", "cache_dir"),
    ("driver", "progress"), ("hydra",), ("save_model",), ("save_masks",),
    ("pruner", "cache_dir"), ("pruner", "scratch_dir"),
    ("data", "fingerprint_cache"),  # a hash cache that is gone; older records still carry it
    ("pruner", "driver", "progress"),  # version-1 records carried the driver inside the pruner
    ("model", "device_map"),  # where accelerate places the layers; added later, so old keys stay valid
    ("pruner", "return_freed_memory"),  # how the allocator trades time for memory; added later
    ("model", "shard_rows"),  # how many copies of the weights the processes hold; added later
    ("pruner", "resume_minutes"),  # how often an interruptible pass saves its progress; added later
)


def _drop(config: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = config
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def record_key(config: Mapping[str, Any]) -> str:
    """A short stable hash of what the cell computes."""
    trimmed = json.loads(json.dumps(config, default=str))
    for path in NOT_IN_KEY:
        _drop(trimmed, path)
    canonical = json.dumps(trimmed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def record_path(results_dir: Path, key: str) -> Path:
    return results_dir / f"{key}.json"


def cell_config(config: dict[str, Any], *, dense: bool, sparsity: float, pattern: str,
                calib: Mapping[str, Any] | None, allocation: str = "uniform",
                unread: Collection[str] = ()) -> dict[str, Any]:
    """The resolved config normalised so that cells that compute the same thing share one key:
    `sparsity` is what the pattern gives (dense: 0, N:M: 1 - N/M), `calib` holds only the
    calibration settings the method reads (`calib`; None drops the group), `unread` names pruner
    options the method does not read in this cell (Pruner.unread_options). Settings added after
    records existed are left out at their defaults, so those records keep their keys: `allocation`
    with its `owl` group when uniform (dense is always uniform), `pruner.reconstruct` when none,
    `pruner.refine` with the `pruner.dsnot` group when none, `pruner.domain_calib.windows` when
    random and `.sources` when null, `domain.calib.exclude_evaluated` when false."""
    config = dict(config)
    config["sparsity"], config["pattern"] = (0.0, "unstructured") if dense else (sparsity, pattern)
    if dense or allocation == "uniform":
        config.pop("allocation", None)
        config.pop("owl", None)
    pruner = config.get("pruner")
    if isinstance(pruner, dict):
        left_out = set(unread) | ({"reconstruct"} if pruner.get("reconstruct") == "none" else set())
        left_out |= {"refine", "dsnot"} if pruner.get("refine", "none") == "none" else set()
        pruner = {k: v for k, v in pruner.items() if k not in left_out}
        if isinstance(pruner.get("domain_calib"), dict):
            defaults = (("windows", "random"), ("sources", None))  # added later: left out at defaults
            size = pruner["domain_calib"].items()
            pruner["domain_calib"] = {k: v for k, v in size if (k, v) not in defaults}
        config["pruner"] = pruner
    domain = config.get("domain")
    if isinstance(domain, dict) and isinstance(domain.get("calib"), dict):  # added later: left out at false
        texts = {k: v for k, v in domain["calib"].items() if not (k == "exclude_evaluated" and v is False)}
        config["domain"] = {**domain, "calib": texts}
    if calib is None:
        config.pop("calib", None)
    else:
        config["calib"] = dict(calib)
    return config


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The project's commit, `-dirty` when tracked files differ from it, asked once per process
    (bench/cell.py asks before the first cell): the code a grid runs is what it imported at the
    start, so a checkout that moves while the grid runs must not relabel its later records."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def budget_block(consumed: Mapping[str, Any], prune_seconds: float | None,
                 memory: Mapping[str, float | None] | None, derived: bool = False) -> dict[str, Any]:
    """The record's `budget`: what the calibration consumed (Pruner.budget: tokens, windows,
    passes, optimizer steps) with the prune cost beside it, the peak memory being the
    accelerator's where the cell ran on one, else the process's resident memory; `derived`: built
    from an older record's config, not counted from the windows drawn."""
    memory = memory or {}
    peak = memory.get("peak_cuda_mb")
    return {**consumed, "prune_seconds": prune_seconds,
            "peak_memory_mb": memory.get("peak_rss_mb") if peak is None else peak, "derived": derived}


def new_record(key: str, config: Mapping[str, Any], *, pruner: str, calib_source: str | None,
               evaluation: EvalResult, sparsity: Mapping[str, Any], prune_seconds: float,
               prune_stages: Mapping[str, Any], matrices: list[dict[str, Any]],
               memory: Mapping[str, float | None], world: Mapping[str, Any] | None = None,
               budget: Mapping[str, Any], layers: Mapping[str, Any] | None = None,
               choices: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A finished cell's record in the layout above, with an interval for every metric;
    `budget`: what its calibration consumed (Pruner.budget), completed by `budget_block`;
    `choices`: its mask, refinement and update (Pruner.describe)."""
    return {
        "key": key, "version": RECORD_VERSION, "status": "done",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cell": {"model": config["model"]["name"], "pruner": pruner, "domain": config["domain"]["name"],
                 "sparsity": config["sparsity"], "pattern": config["pattern"], "calib": calib_source,
                 "allocation": config.get("allocation", "uniform"), "seed": int(config["seed"]),
                 "eval": config["eval"]["name"], **dict(choices or {})},
        "config": dict(config),
        "metrics": dict(evaluation.metrics),
        "metrics_ci": metric_intervals(evaluation.metrics, evaluation.evidence),
        "sparsity": dict(sparsity),
        "prune": {"seconds": prune_seconds, "stages": dict(prune_stages), "matrices": matrices},
        "allocation": dict(layers or {"kind": "uniform"}),
        "eval": {"seconds": evaluation.seconds, "details": dict(evaluation.details)},
        "memory": dict(memory), "world": dict(world or {"size": 1, "backend": None}),
        "versions": versions(), "git": git_revision(), "samples": dict(evaluation.samples),
        "budget": budget_block(budget, prune_seconds, memory),
        "evidence": dict(evaluation.evidence), "masks": None,
    }


def done_lines(record: Mapping[str, Any], path: Path) -> list[str]:
    """What a finished cell prints: a headline, then every metric with its 95 % interval."""
    cell = record["cell"]
    lines = [f"done: {cell['pruner']} {cell['domain']} sparsity={record['sparsity']['achieved']:.3f} "
             f"prune={record['prune']['seconds']:.0f}s eval={record['eval']['seconds']:.0f}s -> {path}"]
    for name, value in record["metrics"].items():
        low, high = record["metrics_ci"].get(name, (value, value))
        lines.append(f"  {name} = {value:.4g}  [{low:.4g}, {high:.4g}]")
    return lines


def probe_results_dir(results_dir: Path) -> None:
    """Create, write, rename and delete a probe file, so an unusable results folder fails before
    the model loads instead of after the whole cell."""
    probe = results_dir / f".probe-{os.getpid()}"
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("probe", encoding="utf-8")
        os.replace(probe, probe.with_suffix(".renamed"))
        probe.with_suffix(".renamed").unlink()
    except OSError as err:
        raise ConfigError(f"results.dir={str(results_dir)!r} is not a writable folder "
                          f"({err.strerror or err}); give a folder you can write to") from None


def finite(value: Any) -> bool:
    """A number that can be recorded, ranked or plotted (not None, text, a boolean, NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def evidence_problems(metrics: Mapping[str, Any], details: Mapping[str, Any]) -> list[str]:
    """Why these results are not evidence (empty when they are): a metric that is not a finite
    number, or a text or task scored on no tokens or items."""
    problems = [f"{name}={value!r} is not a finite number" for name, value in metrics.items()
                if not finite(value)]
    if not metrics:
        problems.append("no metric was computed")
    for name, detail in details.items():
        for count in ("tokens", "items"):
            if count in detail and not (detail[count] or 0) > 0:
                problems.append(f"{name} was scored on {detail[count]} {count}")
    return problems


def save_record(results_dir: Path, record: dict[str, Any]) -> Path:
    """Write a finished record; refuses one whose numbers are not backed by data. A record that
    cannot be written (disk full, file size limit) is kept in a fallback file under the system
    temp folder, named in the error, so that a finished cell is never lost at the last step."""
    problems = evidence_problems(record["metrics"], record["eval"]["details"])
    if problems:
        raise ConfigError(f"cell {record['key']}: {'; '.join(problems)}; nothing recorded")
    path = record_path(results_dir, record["key"])
    try:
        write_atomic(path, json.dumps(record, indent=1, sort_keys=False, default=str))
    except OSError as err:
        raise ConfigError(f"record {path} not written ({err.strerror or err}); "
                          f"{_save_fallback(record, path)}") from None
    return path


def _save_fallback(record: dict[str, Any], path: Path) -> str:
    """Write the record meant for `path`, compact, to the system temp folder; says where (or
    why not)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fallback = Path(tempfile.gettempdir()) / f"dpruner-bench-{record['key']}-{stamp}.json"
    try:
        write_atomic(fallback, json.dumps(record, separators=(",", ":"), default=str))
    except OSError as err:
        return f"nor saved to {fallback} ({err.strerror or err}): the cell's results are lost"
    return f"the finished record is saved as {fallback}: move it to {path} to keep the cell"


class BrokenRecord(ValueError):
    """A record file that cannot be read as a finished record."""


def load_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BrokenRecord(f"{path}: unreadable record ({err})") from err
    if not isinstance(record, dict) or record.get("status") != "done" or "metrics" not in record:
        raise BrokenRecord(f"{path}: not a finished record (no status 'done' / metrics)")
    return record


def incomplete(record: Mapping[str, Any], key: str) -> str | None:
    """Why a readable record does not stand for the cell `key` (None when it does): no metrics,
    another key, or a metric without the per-item evidence it is recomputed from."""
    metrics, evidence = record.get("metrics"), record.get("evidence")
    if not isinstance(metrics, dict) or not metrics:
        return "it has no metrics"
    if record.get("key") != key:
        return f"its key is {record.get('key')!r}, not the cell's"
    for name in metrics:
        source, _, metric = name.rpartition("/")
        try:
            metric_samples(evidence[source], metric)
        except (KeyError, TypeError, ValueError):
            return f"metric {name} has no evidence"
    return None


def _problem(path: Path, key: str) -> str | None:
    """Why the record at `path` is not the finished cell `key`'s; None when it is."""
    try:
        record = load_record(path)
    except BrokenRecord as err:
        return str(err).removeprefix(f"{path}: ")
    return incomplete(record, key)


def finished(results_dir: Path, key: str) -> bool:
    """True when a complete record of the cell exists (`incomplete`). Only asks: every process
    of a cell may call it; `set_aside_unfinished` is the one action, the leader's alone."""
    path = record_path(results_dir, key)
    return path.exists() and _problem(path, key) is None


def set_aside_unfinished(results_dir: Path, key: str) -> Path | None:
    """Rename a record of the cell that is broken or incomplete to `<key>.json.broken-<time>`
    (kept as evidence, with one warning line), so that the cell re-runs and writes a good one.
    Called by the leader alone before any process asks `finished`; returns the new name."""
    path = record_path(results_dir, key)
    problem = _problem(path, key) if path.exists() else None
    if problem is None:
        return None
    aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    print(f"warning: record {path}: {problem}; kept as {aside.name}, re-running the cell")
    return aside


def iter_records(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any] | BrokenRecord]]:
    """Every record file in a folder: (path, record) or (path, the error) for broken ones."""
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            yield path, load_record(path)
        except BrokenRecord as err:
            yield path, err
