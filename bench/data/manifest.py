"""The data manifest (manifest.json beside this module): one entry per file of the data tree, with
its public source, license, size and SHA-256, so that a tree can be fetched and checked without a
copy of ../shared/data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.files import read_json, sha256_file

MANIFEST = Path(__file__).with_name("manifest.json")


@dataclass(frozen=True)
class Entry:
    """One file of the data tree and where it comes from."""

    path: str  # relative to the data root, `/`-separated
    dataset: str  # the name `fetch --only` takes and error lines give
    license: str
    size: int
    sha256: str
    url: str | None  # None: no pinned public source; fetched only from a mirror
    convert: dict[str, Any] = field(default_factory=dict)  # how the file is made from `url` (empty: a copy)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Entry:
        return cls(path=raw["path"], dataset=raw["dataset"], license=raw["license"], size=int(raw["size"]),
                   sha256=raw["sha256"], url=raw["source"].get("url"), convert=raw.get("convert", {}))

    def mismatch(self, path: Path) -> str | None:
        """How the file at `path` differs from this entry's file (None: it is that file)."""
        if not path.is_file():
            return "missing"
        size = path.stat().st_size
        if size != self.size:
            return f"{size} bytes, expected {self.size}"
        digest = sha256_file(path)
        if digest != self.sha256:
            return f"SHA-256 {digest[:12]}..., expected {self.sha256[:12]}..."
        return None


def load_manifest(path: Path = MANIFEST) -> list[Entry]:
    return [Entry.of(raw) for raw in read_json(path, "the data manifest")["files"]]


def datasets(entries: Iterable[Entry]) -> list[str]:
    return sorted({entry.dataset for entry in entries})


def select(entries: Sequence[Entry], names: Sequence[str] | None) -> list[Entry]:
    """The entries of the named datasets (all entries when none are named)."""
    if not names:
        return list(entries)
    unknown = sorted(set(names) - set(datasets(entries)))
    if unknown:
        raise ConfigError(f"unknown dataset(s) {unknown}; known: {', '.join(datasets(entries))}")
    return [entry for entry in entries if entry.dataset in names]
