"""Text sources: the data root, dataset paths, hub datasets, and plain-text documents (the general
calibration text and the perplexity texts), read through the file parsers of core/formats.py.
Calibration readers and evaluation readers never share a file.

Every reader here is also the validation reader: run.py reads each input once with it before
the model loads, so bad bytes, a malformed line or an empty text fail in one line naming the
file, never after pruning."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.formats import Record, raw_text, read_jsonl, text
from core.paths import PROJECT_ROOT, project_path

DATA_ROOT_ENV = "DPB_DATA_ROOT"
CACHE_ENV = "DPB_CACHE_DIR"  # the same cache as model.cache_dir's default (conf/model/*.yaml)
DEFAULT_CACHE = "~/.cache/dpruner-bench"
SHIPPED_DATA_ROOT = PROJECT_ROOT.parent / "shared" / "data"
FETCH_COMMAND = "python -m bench.data fetch"
TEXT_FORMATS = {".jsonl": "jsonl", ".txt": "raw", ".raw": "raw", ".text": "raw", ".md": "raw"}


def cache_root() -> Path:
    """The suite's cache folder: $DPB_CACHE_DIR, else ~/.cache/dpruner-bench (model.cache_dir's
    default too, conf/model/*.yaml)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def fetched_data_root() -> Path:
    """Where `python -m bench.data fetch` writes the data tree: <cache>/data."""
    return cache_root() / "data"


def resolve_data_root(root: str | None) -> Path:
    """`data.root`, else $DPB_DATA_ROOT, else ../shared/data beside the project, else the tree
    `python -m bench.data fetch` wrote under the cache (a clone without ../shared/data)."""
    candidate = root or os.environ.get(DATA_ROOT_ENV)
    if candidate:
        path = project_path(candidate)
        if not path.is_dir():
            raise ConfigError(
                f"data root {str(path)!r} does not exist; set data.root=/path/to/data or "
                f"{DATA_ROOT_ENV} to a folder laid out like shared/data (see docs/fetch.md)"
            )
        return path
    for path in (SHIPPED_DATA_ROOT, fetched_data_root()):
        if path.is_dir():
            return path
    raise ConfigError(
        f"no data: neither {SHIPPED_DATA_ROOT} nor {fetched_data_root()} exists; run `{FETCH_COMMAND}` to "
        f"download the public data there, or set data.root=/path/to/data or {DATA_ROOT_ENV} (docs/fetch.md)"
    )


def data_path(root: Path, relative: str) -> Path:
    """A dataset path under the root (absolute paths are taken as they are)."""
    path = Path(os.path.expanduser(str(relative)))
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"data file {str(path)!r} {what}; point the config value at your copy")
    return path


def text_spec(value: Any, where: str = "text") -> dict[str, Any]:
    """A text source as a mapping {path | hub, format, field}: a plain path takes its format from
    the extension (.jsonl: the `text` field; .txt/.raw/.text/.md: the whole file)."""
    if not isinstance(value, str | os.PathLike | Mapping | None):
        raise ConfigError(f"{where}={value!r} is not a text source: give a path (e.g. "
                          f"{where}=/data/book.txt) or {{path: ..., format: jsonl|raw, field: ...}}")
    spec = {"path": value} if isinstance(value, str | os.PathLike) else dict(value or {})
    if not spec.get("path") and not spec.get("hub"):
        raise ConfigError(f"{where} names no file: give a path (e.g. {where}=/data/book.txt) or "
                          "{path: ..., format: jsonl|raw, field: ...}")
    if spec.get("hub"):
        return spec
    if not spec.get("format"):
        suffix = Path(str(spec["path"])).suffix.lower()
        if suffix not in TEXT_FORMATS:
            raise ConfigError(f"{where}: cannot tell the format of {spec['path']!r} from its extension; "
                              f"name one ({{path: ..., format: jsonl|raw}}) or use {sorted(TEXT_FORMATS)}")
        spec["format"] = TEXT_FORMATS[suffix]
    if spec["format"] not in ("jsonl", "raw"):
        raise ConfigError(f"{where}: format {spec['format']!r} is not supported; use jsonl or raw")
    if spec["format"] == "jsonl":
        spec.setdefault("field", "text")
    return spec


def load_texts(spec: Any, root: Path, where: str = "text") -> list[str]:
    """Documents of one text source: a jsonl file (with `field`) or raw text, an optional
    held-apart slice (`every`: keep rows whose index is a multiple of it), or a hub dataset.
    A source with no text at all is an error: it would score as a perfect perplexity."""
    spec = text_spec(spec, where)
    if spec.get("hub"):
        texts = _hub_texts(spec["hub"])
        origin = f"hub dataset {spec['hub'].get('id')!r}"
    else:
        path = data_path(root, spec["path"])
        origin = str(path)
        if spec["format"] == "raw":
            texts = [raw_text(path)]
        else:
            texts = [text(row, spec["field"]) for row in read_jsonl(path, [spec["field"]])]
        every = spec.get("every")
        texts = texts[::every] if every else texts
    if not any(found.strip() for found in texts):
        raise ConfigError(f"{origin} has no text ({where}); an empty source cannot be scored")
    return texts


def hub_rows(hub: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset split (online users); unreachable is one error line."""
    import datasets

    try:
        return list(datasets.load_dataset(hub["id"], hub.get("name"), split=hub.get("split", "test")))
    except Exception as err:  # the hub client raises many types (connection, not found, auth)
        raise ConfigError(
            f"hub dataset {hub.get('id')!r} cannot be loaded ({str(err).splitlines()[0][:160]}); "
            "fetch it once while online (it is then cached) or give a local `path` instead") from None


def hub_records(hub: Mapping[str, Any]) -> list[Record]:
    """The rows of a hub dataset split, each naming its row for an error."""
    origin = f"hub dataset {hub.get('id')!r}"
    return [Record(row, f"{origin}, row {index}") for index, row in enumerate(hub_rows(hub))]


def _hub_texts(hub: Mapping[str, Any]) -> list[str]:
    field = hub.get("field", "text")
    return [value for value in (text(row, field) for row in hub_records(hub)) if value.strip()]
