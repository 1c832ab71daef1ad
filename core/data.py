"""Text sources: the data root, file readers with clear errors, and plain-text documents (the
general calibration text and the perplexity texts). Calibration readers and evaluation readers
never share a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.paths import PROJECT_ROOT

DATA_ROOT_ENV = "DPB_DATA_ROOT"


def resolve_data_root(root: str | None) -> Path:
    """`data.root`, else $DPB_DATA_ROOT, else ../shared/data beside the project."""
    candidate = root or os.environ.get(DATA_ROOT_ENV)
    path = Path(candidate).expanduser() if candidate else PROJECT_ROOT.parent / "shared" / "data"
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    if not path.is_dir():
        raise ConfigError(
            f"data root {str(path)!r} does not exist; set data.root=/path/to/data or "
            f"{DATA_ROOT_ENV} to a folder laid out like shared/data (see README, 'Data')"
        )
    return path


def data_path(root: Path, relative: str) -> Path:
    """A dataset path under the root (absolute paths are taken as they are)."""
    path = Path(os.path.expanduser(relative))
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise ConfigError(f"data file {str(path)!r} not found; point the config value at your copy")
    return path


def read_jsonl(path: Path, fields: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file, each checked for the fields the caller needs."""
    need = list(fields)
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{number} is not valid JSON ({err.msg})") from err
            missing = [f for f in need if f not in row]
            if missing:
                raise ConfigError(f"{path}:{number} lacks field(s) {missing}; expected {need}")
            rows.append(row)
    return rows


def load_texts(spec: Mapping[str, Any], root: Path) -> list[str]:
    """Documents of one text source: `format` jsonl (with `field`) or raw text, an optional
    held-apart slice (`every`: keep rows whose index is a multiple of it), or a hub dataset."""
    if spec.get("hub"):
        return _hub_texts(spec["hub"])
    path = data_path(root, spec["path"])
    fmt = spec.get("format", "jsonl")
    if fmt == "raw":
        return [path.read_text(encoding="utf-8").replace("\r\n", "\n")]
    if fmt != "jsonl":
        raise ConfigError(f"text format {fmt!r} for {path} is not supported; use jsonl or raw")
    rows = read_jsonl(path, [spec["field"]])
    texts = [str(row[spec["field"]]) for row in rows]
    every = spec.get("every")
    return texts[::every] if every else texts


def _hub_texts(hub: Mapping[str, Any]) -> list[str]:
    """Online users may name a hub dataset instead of a file."""
    import datasets

    dataset = datasets.load_dataset(hub["id"], hub.get("name"), split=hub.get("split", "test"))
    return [str(t) for t in dataset[hub.get("field", "text")] if str(t).strip()]
