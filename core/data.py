"""Text sources: the data root, file readers with clear errors, general calibration windows and
the perplexity texts. Calibration readers and evaluation readers never share a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
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


def token_stream(tokenizer: Any, texts: list[str], max_tokens: int | None = None) -> torch.Tensor:
    """Concatenate documents (EOS between them) into one token sequence, so windows can be
    longer than any single document; stops early once `max_tokens` are collected."""
    eos = tokenizer.eos_token_id
    pieces: list[int] = []
    for text in texts:
        pieces.extend(tokenizer(text, add_special_tokens=False).input_ids)
        if eos is not None:
            pieces.append(eos)
        if max_tokens is not None and len(pieces) >= max_tokens:
            break
    return torch.tensor(pieces, dtype=torch.long)


def sample_windows(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens from a token stream, seeded."""
    if nsamples < 1 or seqlen < 2:
        raise ConfigError(f"calibration needs nsamples>=1 and seqlen>=2, got {nsamples}x{seqlen}")
    if stream.numel() <= seqlen:
        raise ConfigError(f"calibration text has {stream.numel()} tokens, fewer than seqlen={seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen, (nsamples,), generator=generator)
    return torch.stack([stream[s : s + seqlen] for s in starts.tolist()])


def general_calibration(tokenizer: Any, spec: Mapping[str, Any], root: Path,
                        nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Open-domain calibration windows (C4 train by default), shape [nsamples, seqlen]."""
    stream = token_stream(tokenizer, load_texts(spec, root))
    return sample_windows(stream, nsamples, seqlen, seed)
