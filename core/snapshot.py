"""The bytes of every data file a cell reads, read from disk once per cell, so that the record key
names exactly what the cell scored. The first read of a file hashes and keeps its bytes; every
later read in the same cell (calibration, evaluation) gets those bytes, and the key's `inputs`
are their SHA-256. A file that changes on disk while the cell runs is an error before anything is
recorded: the run did not score what is there now, so neither key could be trusted.

Each cell (bench/cell.py's validate) starts a fresh snapshot, so a grid run in one process never
serves one cell's bytes to another. Outside a cell (no snapshot started), reads go to disk.
Memory: the kept bytes are the raw files of one cell (the shipped data is about 20 MB in all); a
file over KEEP_BYTES_UP_TO keeps its hash only and is re-read, hash checked, at each later use."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

KEEP_BYTES_UP_TO = 512 * 2**20


@dataclass(frozen=True)
class _Read:
    sha256: str
    stamp: tuple[int, int, int]  # (inode, size, mtime_ns) of the file the bytes came from
    data: bytes | None  # None: too large to keep; re-read and checked against sha256


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _changed(path: Path, read: _Read, now: str) -> ConfigError:
    return ConfigError(f"{path} changed while the cell ran (validated with sha256 {read.sha256[:16]}, "
                       f"now {now}); nothing recorded; run the cell again")


def _verified(where: Path, read: _Read) -> bytes:
    """The file's bytes on disk now, which must hash as when the cell first read them."""
    try:
        data = where.read_bytes()
    except OSError as err:
        raise _changed(where, read, f"unreadable: {err.strerror or err}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != read.sha256:
        raise _changed(where, read, f"sha256 {digest[:16]}")
    return data


class Snapshot:
    """The files one cell has read, by resolved path."""

    def __init__(self) -> None:
        self._reads: dict[Path, _Read] = {}

    def read(self, path: Path | str) -> bytes:
        """The file's bytes as this cell first read them (raises OSError as a plain read does)."""
        where = Path(path).resolve()
        read = self._reads.get(where)
        if read is None:
            with open(where, "rb") as handle:
                stamp, data = _stamp(os.fstat(handle.fileno())), handle.read()
            digest = hashlib.sha256(data).hexdigest()
            self._reads[where] = _Read(digest, stamp, data if len(data) <= KEEP_BYTES_UP_TO else None)
            return data
        try:
            same = _stamp(where.stat()) == read.stamp  # cheap: most later reads stop here
        except OSError:
            same = False
        if same and read.data is not None:
            return read.data
        data = _verified(where, read)
        return read.data if read.data is not None else data

    def sha256(self, path: Path | str) -> str:
        """The SHA-256 of the bytes this cell reads from `path` (read now if not yet read)."""
        self.read(path)
        return self._reads[Path(path).resolve()].sha256

    def check_unchanged(self) -> None:
        """Every file read still holds the bytes the cell read (re-hashed: size and time can stay
        the same through an edit); a changed or vanished one raises ConfigError naming it."""
        for where, read in sorted(self._reads.items()):
            _verified(where, read)


_cell: Snapshot | None = None


def start_cell() -> Snapshot:
    """A fresh snapshot for the cell about to be validated; later reads in this process use it."""
    global _cell
    _cell = Snapshot()
    return _cell


def read_bytes(path: Path | str) -> bytes:
    """A data file's bytes: the current cell's copy, or the disk's outside a cell."""
    return _cell.read(path) if _cell is not None else Path(path).read_bytes()
