"""Writing files so that readers see all or nothing, and reading JSON with one clear error.

Every file or folder the project produces (records, masks, benchmark reports, D-Pruner's scratch
and cache files, converted and pruned models) is staged under a temporary name in the target's
folder and renamed into place: a killed writer leaves only a hidden temporary, never a half file.
The temporary's name carries the writer's host and pid (`.<name>.<host>-<pid>.<random>.tmp`), so
that a later run can tell the leftovers of killed writers from the files of live ones and remove
them (`remove_stale_partials`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from core.errors import ConfigError

CHUNK = 1 << 20
PARTIAL = re.compile(r"\..+\.(?P<host>[\w-]+)-(?P<pid>\d+)\.\w+\.tmp")


class Damaged(Exception):
    """A stored file or folder that does not match the record written with it; the message says
    how (missing, truncated, checksum differs, unreadable index)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    """This host's name as one name segment (no dots), as it appears in temporary names."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _partial_prefix(name: str) -> str:
    return f".{name}.{_host()}-{os.getpid()}."


@contextmanager
def scratch_folder(parent: Path | str | None, name: str) -> Iterator[Path]:
    """A temporary folder for one run's scratch files (removed at the end), named like a partial
    file so that the next start removes it if this run is killed."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(parent)
    with tempfile.TemporaryDirectory(prefix=_partial_prefix(name), suffix=".tmp", dir=parent) as folder:
        yield Path(folder)


@contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it is flushed, synced and renamed over
    `path`, on any failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_partial_prefix(path.name), suffix=".tmp")
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _set_aside(path: Path) -> Path | None:
    """Rename `path` to a temporary name of this process (atomic: no reader sees it half
    removed; a delete killed half way leaves a stale partial for the next start). None when
    there is nothing at `path`."""
    aside = path.with_name(f"{_partial_prefix(path.name)}{secrets.token_hex(4)}.tmp")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside


@contextmanager
def atomic_dir(target: Path | str, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`, renamed to `target` when the block ends
    without error. With `replace=False` an existing target (another process finished first)
    is kept and the staged copy dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=_partial_prefix(target.name), suffix=".tmp"))
    os.chmod(staging, 0o777 & ~_umask())  # as a plain mkdir would (mkdtemp makes it private)
    try:
        yield staging
        if target.exists() and not replace:
            return
        old = _set_aside(target)
        os.replace(staging, target)
        if old is not None:
            _remove(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def discard_damaged(what: str, err: Damaged, *paths: Path) -> None:
    """One warning line naming the first path, then every path of the damaged entry goes, so
    that the caller recomputes it instead of failing on it again in every later run."""
    print(f"warning: {what} {paths[0]} is damaged ({err}); discarded, recomputing")
    for path in paths:
        aside = _set_aside(path)
        if aside is not None:
            _remove(aside)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return path.stat().st_size


def _human_size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def remove_stale_partials(folder: Path | str) -> list[Path]:
    """Remove the temporaries that writers killed on this host left in `folder` (a killed G
    cache write leaves ~26 GB at 7B): those whose pid no longer runs. A live writer's
    temporary, or one written by another host sharing the disk, is left alone."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = PARTIAL.fullmatch(path.name)
        if match is None or match["host"] != _host() or _alive(int(match["pid"])):
            continue
        try:
            size = _size(path)
            _remove(path)
        except FileNotFoundError:  # another starting run removed it first
            continue
        print(f"removed stale partial file {path} ({_human_size(size)}) left by a killed run")
        removed.append(path)
    return removed


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path | str, expected: str = "JSON") -> Any:
    """Parse a JSON file; an unreadable or malformed one is a ConfigError naming the file and
    what it should hold."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}); expected {expected}") from err


def check_folder_setting(setting: str, value: str | Path | None) -> None:
    """A folder the run will create or write into (a cache, a scratch folder) must not be, or lie
    below, a file: caught before the model loads rather than at the first write, after pruning."""
    if value is None or str(value) == "":
        return
    path = Path(os.path.expanduser(str(value)))
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == path else f"lies below the file {place}"
                raise ConfigError(f"{setting}={value} {where}, not a folder; point it at a folder "
                                  "(one that exists, or that can be created)")
            return
