"""Rank-local loading (model.shard_rows): each rank reads only its rows of every pruned matrix from
the safetensors files, the rest whole; bad settings are refused before any weights load. The
2-rank prunes on row-sharded weights are in test_distributed.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from bench.cell import row_shard_methods
from core.distributed import World, local_rows
from core.errors import ConfigError
from core.models import check_device_map, check_shard_rows
from core.row_shards import is_row_shard, load_row_shards, own_rows, row_sharded
from core.structure import model_linears
from pruners import REGISTRY, build
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", seed=3).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_each_rank_reads_its_rows_and_every_other_tensor_whole(saved: Path, rank: int) -> None:
    world = World(rank, 3)
    whole = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    rows = load_row_shards(AutoConfig.from_pretrained(saved), saved, torch.float32, world)
    assert row_sharded(rows) and not row_sharded(whole)
    shard_linears, whole_linears = model_linears(rows), model_linears(whole)
    sharded = {id(linear.weight) for linear in shard_linears.values()}
    for name, linear in shard_linears.items():
        expected = local_rows(whole_linears[name].weight, world)
        assert is_row_shard(linear) and linear.out_features == whole_linears[name].out_features
        assert torch.equal(linear.weight, expected) and torch.equal(own_rows(linear), expected)
    whole_params = dict(whole.named_parameters())
    for name, param in rows.named_parameters():
        if id(param) not in sharded:
            assert torch.equal(param, whole_params[name]), name
    for (name, buffer), (_, reference) in zip(rows.named_buffers(), whole.named_buffers(), strict=True):
        assert torch.equal(buffer, reference), name  # the rotary tables are computed, not loaded
    if rows.config.tie_word_embeddings:
        assert rows.get_output_embeddings().weight is rows.get_input_embeddings().weight


def test_a_rank_holds_its_share_of_the_pruned_rows(saved: Path) -> None:
    rows = load_row_shards(AutoConfig.from_pretrained(saved), saved, torch.float32, World(1, 3))
    counts = [linear.out_features for linear in model_linears(rows).values()]
    held = sum(linear.weight.shape[0] for linear in model_linears(rows).values())
    assert held == sum(-(-count // 3) for count in counts) < sum(counts) / 2


def test_a_folder_without_safetensors_is_one_clear_error(tmp_path: Path) -> None:
    tiny_model("llama").config.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="reads rows from safetensors files"):
        load_row_shards(AutoConfig.from_pretrained(tmp_path), tmp_path, torch.float32, World(0, 2))


@pytest.mark.parametrize(("model", "pruner", "message"), [
    ({"source": "random"}, "dpruner", "needs a saved model"),
    ({"source": "pretrained"}, "magnitude", "does not run pruner=magnitude"),
    ({"source": "pretrained", "shard_rows": "yes"}, "dpruner", "choose true or false"),
])
def test_bad_settings_are_refused_before_loading(model: dict, pruner: str, message: str) -> None:
    method = build(pruner)  # validation is given the method's own flag (bench/cell.py)
    cfg = OmegaConf.create({"shard_rows": True, **model})
    with pytest.raises(ConfigError, match=message):
        check_shard_rows(cfg, method.row_shards, method.name, row_shard_methods())
    check_shard_rows(OmegaConf.create({**model, "shard_rows": False}), method.row_shards, method.name,
                     row_shard_methods())  # off


@pytest.mark.parametrize("pruner", sorted(REGISTRY))
def test_methods_that_prune_through_the_driver_take_row_sharded_weights(pruner: str) -> None:
    """Each method's own flag decides: Wanda, RIA, SparseGPT and D-Pruner gather what they need whole;
    magnitude and dense (whole matrices at once) refuse in one line."""
    method = build(pruner)
    cfg = OmegaConf.create({"source": "pretrained", "shard_rows": True})
    if pruner in ("wanda", "ria", "sparsegpt", "dpruner"):
        check_shard_rows(cfg, method.row_shards, method.name, row_shard_methods())
    else:
        with pytest.raises(ConfigError, match=f"does not run pruner={pruner} "):
            check_shard_rows(cfg, method.row_shards, method.name, row_shard_methods())


def test_a_map_with_several_processes_places_rank_0s_evaluation_of_row_sharded_loading() -> None:
    mapped = {"source": "pretrained", "device_map": "auto"}
    whole = build("dpruner").moves_whole_model
    with pytest.raises(ConfigError, match="add model.shard_rows=true"):
        check_device_map(OmegaConf.create({**mapped, "shard_rows": False}), 2, whole, "dpruner")
    check_device_map(OmegaConf.create({**mapped, "shard_rows": True}), 2, whole, "dpruner")
    with pytest.raises(ConfigError, match="does not run pruner=dpruner"):
        check_device_map(OmegaConf.create({**mapped, "shard_rows": True}), 1, whole, "dpruner")


@pytest.mark.parametrize("pruner", sorted(REGISTRY))
def test_one_process_maps_every_method_but_a_whole_model_pass(pruner: str) -> None:
    """The method's own `moves_whole_model` decides: only D-Pruner's back-propagation refuses a map."""
    method, cfg = build(pruner), OmegaConf.create({"source": "pretrained", "device_map": "auto"})
    if pruner == "dpruner":
        with pytest.raises(ConfigError, match="moves the whole model"):
            check_device_map(cfg, 1, method.moves_whole_model, method.name)
    else:
        check_device_map(cfg, 1, method.moves_whole_model, method.name)
