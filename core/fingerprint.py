"""Content fingerprints of the data files a cell reads, so that a file edited in place gives the
cell a new record key (and a rerun recomputes instead of skipping). Hashing is cached by path,
size and modification time: an unchanged file is hashed once per machine."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from core.files import sha256_file, write_atomic


def _load_cache(cache: Path) -> dict[str, dict]:
    """The hash cache; an unreadable one is dropped (it only saves time) with one warning."""
    if not cache.exists():
        return {}
    try:
        entries = json.loads(cache.read_text(encoding="utf-8"))
        if isinstance(entries, dict):
            return entries
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    print(f"warning: fingerprint cache {cache} is damaged; discarded, rehashing")
    return {}


def fingerprints(files: Iterable[Path], root: Path, cache: Path | None) -> dict[str, str]:
    """{file (relative to the data root when under it): sha256[:16]} for every file, sorted."""
    entries = _load_cache(cache) if cache is not None else {}
    found, changed = {}, False
    for path in sorted({Path(f).resolve() for f in files}):
        stat = path.stat()
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = entries.get(str(path))
        if not isinstance(entry, dict) or {k: entry.get(k) for k in stamp} != stamp or "sha256" not in entry:
            entry = {**stamp, "sha256": sha256_file(path)}
            entries[str(path)], changed = entry, True
        name = path.relative_to(root.resolve()) if path.is_relative_to(root.resolve()) else path
        found[str(name)] = str(entry["sha256"])[:16]
    if cache is not None and changed:
        try:
            write_atomic(cache, json.dumps(entries, indent=0, sort_keys=True))
        except OSError as err:  # a read-only cache folder costs time, not correctness
            print(f"warning: fingerprint cache {cache} not written ({err.strerror or err})")
    return found
