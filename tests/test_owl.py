"""OWL layer-wise sparsity: the allocation rule, its statistics against a brute-force computation
on a tiny model, the sparsity every method then achieves, bad settings, and unchanged keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bench.results.records import cell_config, record_key
from core.calibration import Calibration
from core.errors import ConfigError
from core.paths import PROJECT_ROOT
from core.structure import decoder_layers, model_linears, prunable_linears
from pruners import Allocation, DriverSettings, build
from pruners.allocation import allocate, outlier_ratio, owl_sparsities
from pruners.masks import prune_count
from tests.conftest import VOCAB

CPU = torch.device("cpu")
QUIET = {"progress": False, "batch_size": 4}
OWL = Allocation("owl", threshold=2.0, lambda_=0.1)  # a low threshold: tiny random layers have outliers


def four_layer_llama() -> torch.nn.Module:
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # layers of clearly different outlier content
        for i, layer in enumerate(decoder_layers(model)):
            for linear in prunable_linears(layer).values():
                heavy = torch.rand_like(linear.weight) < 0.02 * (i + 1)
                linear.weight[heavy] *= 8.0
    return model


def brute_force_ratios(model: torch.nn.Module, ids: torch.Tensor, threshold: float) -> list[float]:
    """Every linear's inputs from one plain dense forward, |W| * ||X_j|| written out, and the
    fraction of a layer's scores above threshold x their mean."""
    inputs: dict[str, list[torch.Tensor]] = {}
    linears = model_linears(model)
    handles = [m.register_forward_pre_hook(lambda m, a, n=name: inputs.setdefault(n, []).append(a[0]))
               for name, m in linears.items()]
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    ratios = []
    for index in range(len(decoder_layers(model))):
        scores = []
        for name, linear in linears.items():
            if name.startswith(f"layers.{index}."):
                x = torch.cat(inputs[name]).reshape(-1, linear.in_features).double()
                norms = x.pow(2).sum(0).sqrt()
                scores.append((linear.weight.double().abs() * norms).flatten())
        everything = torch.cat(scores)
        ratios.append(float((everything > threshold * everything.mean()).double().mean()))
    return ratios


def test_unclamped_allocation_is_owls_released_formula() -> None:
    """Ratios whose mapped offsets average lambda never meet the band: OWL's own formula, i.e.
    keep ratio (D - min) / (max - min) * 2 lambda re-centred on 1 - target."""
    ratios, target, lam = [0.01, 0.02, 0.03, 0.04, 0.05], 0.6, 0.08
    keep = [(r - min(ratios)) / (max(ratios) - min(ratios)) * 2 * lam for r in ratios]
    keep = [k - sum(keep) / len(keep) + (1 - target) for k in keep]
    assert owl_sparsities(ratios, target, lam) == pytest.approx([1 - k for k in keep], abs=1e-12)


@pytest.mark.parametrize("target,lam", [(0.5, 0.08), (0.7, 0.08), (0.3, 0.2)])
def test_sparsities_keep_the_target_the_band_and_the_order(target: float, lam: float) -> None:
    ratios = [0.002, 0.030, 0.004, 0.001, 0.011, 0.006, 0.0025]
    sizes = [100, 300, 100, 200, 100, 50, 400]
    found = owl_sparsities(ratios, target, lam, sizes)
    mean = sum(s * w for s, w in zip(found, sizes, strict=True)) / sum(sizes)
    assert mean == pytest.approx(target, abs=1e-12)
    assert all(target - lam - 1e-12 <= s <= target + lam + 1e-12 for s in found)
    by_ratio = [s for _, s in sorted(zip(ratios, found, strict=True))]
    assert by_ratio == sorted(by_ratio, reverse=True)  # more outliers: never sparser
    assert max(found) - min(found) > lam  # the spread is used, not collapsed to the target


def test_equal_ratios_or_no_spread_give_uniform() -> None:
    assert owl_sparsities([0.1, 0.1, 0.1], 0.5, 0.08) == [0.5] * 3
    assert owl_sparsities([0.1, 0.2], 0.5, 0.0) == [0.5, 0.5]


def test_outlier_ratio_counts_over_the_whole_layer() -> None:
    a, b = torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0, 13.0]])
    # mean over all 8 scores is 2.5: only 13 exceeds 2 x 2.5
    assert outlier_ratio([a, b], 2.0) == pytest.approx(1 / 8)


def test_ratios_match_a_brute_force_computation(calib_ids) -> None:
    model = four_layer_llama()
    found = allocate(model, calib_ids, OWL, 0.5, DriverSettings(**QUIET), CPU)
    expected = brute_force_ratios(model, calib_ids, OWL.threshold)
    assert found.ratios == pytest.approx(expected, abs=1e-9)
    assert len(set(expected)) == 4  # the test means something: the layers differ
    sizes = [sum(m.weight.numel() for m in prunable_linears(layer).values())
             for layer in decoder_layers(model)]
    assert found.sparsities == pytest.approx(owl_sparsities(expected, 0.5, OWL.lambda_, sizes), abs=1e-9)


def expected_zeros(model: torch.nn.Module, sparsities: list[float], group: str) -> dict[str, int]:
    """Zeros each matrix must have at its layer's sparsity, by the masks' rounding rule."""
    zeros = {}
    for name, linear in model_linears(model).items():
        s = sparsities[int(name.split(".")[1])]
        rows, cols = linear.weight.shape
        zeros[name] = rows * prune_count(cols, s) if group == "row" else prune_count(rows * cols, s)
    return zeros


@pytest.mark.parametrize("method,group", [("wanda", "row"), ("sparsegpt", "matrix"), ("magnitude", "matrix")])
def test_every_method_prunes_each_layer_to_its_share(method: str, group: str, calib_ids) -> None:
    model = four_layer_llama()
    pruner = build(method, sparsity=0.5, driver=QUIET, allocation=OWL)
    assert "ids" in pruner.calibration_requests({"source": "general", "nsamples": 6, "seqlen": 24})
    pruner.prune(model, Calibration(ids=calib_ids), CPU)
    sparsities = pruner.layers.sparsities
    assert len(set(sparsities)) == 4
    zeros = {n: int((m.weight == 0).sum()) for n, m in model_linears(model).items()}
    # SparseGPT chooses over each 128-column block of all rows: one block here, so the matrix
    assert zeros == expected_zeros(model, sparsities, group)
    total = sum(m.weight.numel() for m in model_linears(model).values())
    assert sum(zeros.values()) / total == pytest.approx(0.5, abs=0.01)  # the target, up to rounding
    assert pruner.layers.report()["sparsities"] == sparsities


def test_dpruner_selects_each_layer_at_its_share(tiny_dpruner) -> None:
    model, calibration = tiny_dpruner
    pruner = build("dpruner", sparsity=0.5, driver=QUIET, allocation=Allocation("owl", 2.0, 0.1),
                   domain_calib={"nsamples": 4, "seqlen": 48}, batch_size=2)
    pruner.prune(model, calibration, CPU)
    for name, linear in model_linears(model).items():
        assert int((linear.weight == 0).sum()) == prune_count(linear.weight.numel(), pruner.sparsity_of(name))
    assert len(set(pruner.layers.sparsities)) > 1
    assert pruner.sparsity_of("layers.1.mlp.up_proj") == pruner.layers.sparsities[1]


@pytest.fixture
def tiny_dpruner():
    from omegaconf import OmegaConf

    from core.calibration import domain_windows, general_windows
    from core.data import resolve_data_root
    from core.models import load_model
    from core.paths import CONF_DIR

    model, tokenizer = load_model(OmegaConf.load(CONF_DIR / "model/tiny-llama.yaml"))
    root = resolve_data_root(None)
    general = general_windows(tokenizer, OmegaConf.load(CONF_DIR / "config.yaml").data.general.calib,
                              root, 4, 48, 0)
    calib = OmegaConf.load(CONF_DIR / "domain/legal.yaml").calib
    calib.max_tokens = 10_000
    domain = domain_windows(tokenizer, calib, root, 4, 48, 0)
    return model, Calibration(ids=general, general=general, domain=domain)


@pytest.mark.parametrize("options,message", [
    (dict(pattern="2:4"), "needs pattern=unstructured"),
    (dict(sparsity=0.95), "outside \\[0, 1\\)"),
    (dict(sparsity=0.05), "outside \\[0, 1\\)"),
])
def test_owl_refuses_what_it_cannot_allocate(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build("wanda", **{"sparsity": 0.5, **options}, allocation=Allocation("owl"))


def test_bad_allocation_settings_name_the_value() -> None:
    with pytest.raises(ConfigError, match="allocation"):
        Allocation.of("layerwise")
    with pytest.raises(ConfigError, match="unknown setting"):
        Allocation.of("owl", {"alpha": 1})
    with pytest.raises(ConfigError, match="owl.lambda_"):
        Allocation.of("owl", {"lambda_": 1.5})


def test_dense_ignores_owl() -> None:
    assert build("dense", allocation=Allocation("owl")).allocation.kind == "uniform"


def test_uniform_cells_keep_their_keys() -> None:
    """Every committed record is found again under its stored key: its file is named by it, and
    its config -- as stored, and with the settings added since at their defaults where it has none
    (allocation=uniform, the owl group, pruner.reconstruct=none) -- hashes to it."""
    owl_group = {"threshold": 5.0, "lambda_": 0.08}
    paths = sorted((PROJECT_ROOT / "results/leaderboard/records").glob("*.json"))
    assert paths
    for path in paths:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        assert path.name == f"{record['key']}.json"
        assert record_key(record["config"]) == record["key"], path.name
        config = {"allocation": "uniform", "owl": owl_group, **record["config"]}
        config["pruner"] = {"reconstruct": "none", **config["pruner"]}
        dense = record["cell"]["pruner"] == "dense"
        normalised = cell_config(config, dense=dense, sparsity=config["sparsity"], pattern=config["pattern"],
                                 calib=config.get("calib"), allocation=config["allocation"])
        assert record_key(normalised) == record["key"], path.name
    uniform = {**config, "allocation": "uniform", "owl": owl_group}
    owl = {**uniform, "allocation": "owl"}
    keys = [record_key(cell_config(c, dense=False, sparsity=0.5, pattern="unstructured", calib=c.get("calib"),
                                   allocation=c["allocation"])) for c in (uniform, owl)]
    assert keys[0] != keys[1]
