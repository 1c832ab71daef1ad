"""Writing files so that readers see all or nothing, and reading JSON with one clear error.

Every file or folder the project produces (records, masks, benchmark reports, D-Pruner's scratch
and cache files, converted and pruned models) is staged under a temporary name in the target's
folder and renamed into place: a killed writer leaves only a hidden temporary, never a half file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from core.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it is flushed, synced and renamed over
    `path`, on any failure removed."""
    path = Path(path)
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


def write_atomic(path: Path | str, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


@contextmanager
def atomic_dir(target: Path | str, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`, renamed to `target` when the block ends
    without error. With `replace=False` an existing target (another process finished first)
    is kept and the staged copy dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        if target.exists():
            if not replace:
                return
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_json(path: Path | str, expected: str = "JSON") -> Any:
    """Parse a JSON file; an unreadable or malformed one is a ConfigError naming the file and
    what it should hold."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}); expected {expected}") from err
