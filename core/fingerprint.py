"""Content fingerprints of the data files a cell reads, so that a file edited in place gives the
cell a new record key (and a rerun recomputes instead of skipping). Each is the hash of the bytes
the cell itself reads (core/snapshot.py), never of a second read or a cached one: the key names
exactly the content the cell scores."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from core.snapshot import Snapshot


def fingerprints(files: Iterable[Path], root: Path, snapshot: Snapshot) -> dict[str, str]:
    """{file (relative to the data root when under it): sha256[:16]} for every file, sorted."""
    found = {}
    for path in sorted({Path(f).resolve() for f in files}):
        name = path.relative_to(root.resolve()) if path.is_relative_to(root.resolve()) else path
        found[str(name)] = snapshot.sha256(path)[:16]
    return found
