"""The result store: one JSON record per cell, named by a hash of the cell's resolved config,
written atomically so a killed cell leaves no partial record and a rerun can skip finished ones.

Record layout (version 1):
  key, version, created, status ("done")
  cell: {model, pruner, domain, sparsity, pattern, calib, seed, eval}   -- the grid coordinates
  config: the resolved config
  metrics: flat {"<domain|general>/<task>/<metric>": float}
  sparsity: {target, achieved, model, per_matrix}
  prune: {seconds, matrices: [per-matrix report]}
  eval: {seconds, details}
  memory: {peak_rss_mb, peak_cuda_mb}
  versions, git, samples (generated texts), masks (relative path or null)"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

RECORD_VERSION = 1

# Settings that change where things go or how they are shown, never what a cell computes.
NOT_IN_KEY = (
    ("logger",), ("results",), ("force",), ("data", "root"), ("model", "cache_dir"),
    ("driver", "progress"), ("pruner", "driver", "progress"), ("hydra",), ("save_model",), ("save_masks",),
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file in the target's folder and rename it over the target on success:
    readers see all or nothing, and a killed writer leaves only a hidden temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as a plain open() would: others on a shared disk can read
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def save_record(results_dir: Path, record: dict[str, Any]) -> Path:
    path = record_path(results_dir, record["key"])
    write_atomic(path, json.dumps(record, indent=1, sort_keys=False, default=str))
    return path


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


def finished(results_dir: Path, key: str) -> bool:
    """True when the cell's record exists and reads; a broken one is set aside (kept, renamed)
    so that the rerun can write a good record without destroying the evidence."""
    path = record_path(results_dir, key)
    if not path.exists():
        return False
    try:
        load_record(path)
        return True
    except BrokenRecord as err:
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        print(f"warning: {err}; kept as {aside.name}, re-running the cell")
        return False


def iter_records(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any] | BrokenRecord]]:
    """Every record file in a folder: (path, record) or (path, the error) for broken ones."""
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            yield path, load_record(path)
        except BrokenRecord as err:
            yield path, err
