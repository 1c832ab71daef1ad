"""Rank-local loading (`model.shard_rows=true` on several processes): each process holds only its
rows of every pruned matrix -- the rows FSDP's dim-0 sharding gives it (core.distributed.local_rows)
-- read straight from the safetensors files, so N processes together hold one copy of the decoder
layers plus N copies of the small parts (embeddings, norms, output layer) instead of N models.

A row-sharded nn.Linear keeps its full `out_features`; only its weight has fewer rows, which is
how one is recognised. Where a whole matrix is needed it is gathered from every rank one piece at a
time: the layer-by-layer driver gathers each decoder layer while it runs it (`whole_layer`), and
after pruning rank 0 gathers the pruned model it evaluates (`gather_to_leader`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from core.distributed import World, current, gather_rows, local_rows
from core.errors import ConfigError
from core.structure import model_linears, prunable_linears


def is_row_shard(linear: nn.Linear) -> bool:
    return linear.weight.shape[0] != linear.out_features


def row_sharded(model: nn.Module) -> bool:
    """Whether this process holds only its rows of the pruned matrices."""
    return any(is_row_shard(linear) for linear in model_linears(model).values())


def whole_rows(linear: nn.Linear) -> torch.Tensor:
    """The linear's whole weight (gathered from every rank when it is row-sharded); every rank
    must ask for the same matrices in the same order."""
    weight = linear.weight.data
    return gather_rows(weight, linear.out_features) if is_row_shard(linear) else weight


def own_rows(linear: nn.Linear) -> torch.Tensor:
    """This rank's rows of the linear's weight (a view; the weight itself when row-sharded)."""
    weight = linear.weight.detach()
    return weight if is_row_shard(linear) else local_rows(weight)


def _set_weight(linear: nn.Linear, value: torch.Tensor) -> None:
    linear.weight = nn.Parameter(value, requires_grad=linear.weight.requires_grad)


@contextmanager
def whole_layer(layer: nn.Module) -> Iterator[None]:
    """Every row-sharded linear of `layer` whole while inside; on the way out each keeps its own
    rows of whatever the weight is then (a layer pruned inside stays pruned)."""
    shards = [linear for linear in prunable_linears(layer).values() if is_row_shard(linear)]
    for linear in shards:
        _set_weight(linear, whole_rows(linear))
    try:
        yield
    finally:
        for linear in shards:
            _set_weight(linear, local_rows(linear.weight.data).clone())


@torch.no_grad()
def gather_to_leader(model: nn.Module) -> None:
    """After pruning: rank 0 holds every matrix whole in CPU memory (it evaluates the model, placed
    by core.models.place_for_evaluation); the other ranks keep their rows (they are done)."""
    if not current().distributed:
        return
    for linear in model_linears(model).values():
        if is_row_shard(linear):
            whole = whole_rows(linear)
            if current().leader:
                _set_weight(linear, whole.to("cpu"))


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a save_pretrained folder: the index's shards, or model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConfigError(f"model.shard_rows=true reads rows from safetensors files, and {folder} has none "
                      "(model.safetensors or model.safetensors.index.json); load it whole (shard_rows=false)")


def _parameter_name(key: str, names: set[str], prefix: str) -> str | None:
    """The model's parameter a checkpoint key fills (keys may lack the base model's prefix)."""
    for name in (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}.")):
        if name in names:
            return name
    return None


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=module._parameters[leaf].requires_grad)


@torch.no_grad()
def load_row_shards(config: PretrainedConfig, folder: Path, dtype: torch.dtype,
                    world: World | None = None) -> PreTrainedModel:
    """The model of `config` with its weights from `folder`'s safetensors, each pruned matrix cut
    to this rank's rows as it is read (the rest read whole); nothing whole is ever materialised."""
    world = world or current()
    with init_empty_weights():  # parameters on the meta device, buffers (rotary tables) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    sharded = {id(linear.weight) for linear in model_linears(model).values()}
    params = dict(model.named_parameters())
    prefix = getattr(model, "base_model_prefix", "")
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                name = _parameter_name(key, set(params), prefix)
                if name is None:
                    continue
                if id(params[name]) in sharded:
                    rows = params[name].shape[0]
                    chunk = -(-rows // world.size)
                    value = weights.get_slice(key)[world.rank * chunk : (world.rank + 1) * chunk]
                else:
                    value = weights.get_tensor(key)
                _set_parameter(model, name, value.to(dtype))
    model.tie_weights()
    missing = [name for name, param in model.named_parameters() if param.is_meta]
    if missing:
        raise ConfigError(f"model.shard_rows=true: {folder} has no weights for {missing[:3]} "
                          f"({len(missing)} parameters); load it whole (model.shard_rows=false)")
    return model
