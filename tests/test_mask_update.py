"""What follows a mask, for every mask method (pruners/mask_update.py): the update keeps the
method's own mask exactly and lowers every matrix's layer error; given SparseGPT's own masks it
reproduces SparseGPT's model; DSnoT's refinement keeps every row's count of kept weights; SparseGPT
refuses both; the record key leaves the settings out where they change nothing."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.results.records import cell_config, record_key
from core.calibration import Calibration
from core.errors import ConfigError
from core.structure import model_linears
from pruners import build
from pruners.mask_update import update_kept_weights
from pruners.settings import DriverSettings
from tests.test_owl import tiny_dpruner  # noqa: F401  (fixture)

CPU = torch.device("cpu")
QUIET = {"progress": False}
MASK_METHODS = {
    "magnitude": {},
    "wanda": {},
    "ria": {},
    "dpruner": {"domain_calib": {"nsamples": 4, "seqlen": 48}, "batch_size": 2},
}


def masks_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: linear.weight != 0 for name, linear in model_linears(model).items()}


def pruned(model: torch.nn.Module, calibration: Calibration, name: str,
           **options) -> tuple[torch.nn.Module, list]:
    copied = copy.deepcopy(model)
    pruner = build(name, sparsity=0.5, driver=QUIET, **MASK_METHODS.get(name, {}), **options)
    return copied, pruner.prune(copied, calibration, CPU)


@pytest.mark.parametrize("method", sorted(MASK_METHODS))
def test_update_keeps_each_methods_mask_and_lowers_every_error(tiny_dpruner, method: str) -> None:  # noqa: F811
    model, calibration = tiny_dpruner
    windows = Calibration(**calibration, reconstruct=calibration["general"])
    plain, _ = pruned(model, windows, method)
    updated, reports = pruned(model, windows, method, reconstruct="general")
    for (name, keep), plain_keep in zip(masks_of(updated).items(), masks_of(plain).values(), strict=True):
        assert torch.equal(keep, plain_keep), name  # the method's own mask, exactly
    moved = [not torch.equal(a.weight, b.weight)
             for a, b in zip(model_linears(updated).values(), model_linears(plain).values(), strict=True)]
    assert all(moved)  # every matrix's kept weights were updated
    assert len(reports) == len(model_linears(model))
    for report in reports:
        assert report.notes["error_reconstructed"] < report.notes["error_masked"], report.name


def test_sparsegpts_masks_given_to_the_shared_update_give_sparsegpts_model(tiny_dpruner) -> None:  # noqa: F811
    model, calibration = tiny_dpruner
    own, _ = pruned(model, calibration, "sparsegpt")
    again = copy.deepcopy(model)
    keep = masks_of(own)
    update_kept_weights(again, calibration.ids, keep.__getitem__, 0.01, DriverSettings(progress=False), CPU)
    for (name, a), b in zip(model_linears(own).items(), model_linears(again).values(), strict=True):
        assert torch.equal(a.weight, b.weight), name


@pytest.mark.parametrize("options,setting", [({"reconstruct": "mixed"}, "pruner.reconstruct=mixed"),
                                             ({"refine": "dsnot"}, "pruner.refine=dsnot")])
def test_sparsegpt_refuses_a_follow_up_in_one_line(options: dict, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting) as caught:
        build("sparsegpt", **options)
    assert "\n" not in str(caught.value) and "sparsegpt" in str(caught.value)


@pytest.mark.parametrize("options", [{"reconstruct": "bogus"}, {"refine": "bogus"}, {"percdamp": 0}])
def test_bad_follow_up_values_are_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        build("wanda", **options)


def test_records_name_mask_refinement_and_update() -> None:
    assert build("wanda", reconstruct="mixed").describe() == {"mask": "wanda", "refine": "none",
                                                              "update": "obs(mixed)"}
    assert build("magnitude", refine="dsnot").describe()["refine"] == "dsnot"
    assert build("sparsegpt").describe()["update"] == "joint"


def test_the_key_holds_a_follow_up_only_where_it_changes_the_cell() -> None:
    """`percdamp` without an update changes nothing for Wanda (dropped from its key), but is
    D-Pruner's G dampening too (kept); refine/reconstruct at none leave the key as before."""
    def key(pruner: dict, unread: tuple[str, ...]) -> str:
        config = {"pruner": pruner, "sparsity": 0.5, "pattern": "unstructured", "seed": 0}
        return record_key(cell_config(config, dense=False, sparsity=0.5, pattern="unstructured", calib=None,
                                      unread=unread))

    before = key({"_target_": "pruners.wanda.Wanda"}, ())
    wanda = build("wanda", percdamp=0.05)
    now = {"_target_": "pruners.wanda.Wanda", "reconstruct": "none", "refine": "none", "percdamp": 0.05,
           "dsnot": {"any": 1}}
    assert wanda.unread_options() == ("percdamp",)
    assert key(now, wanda.unread_options()) == before
    updated = build("wanda", reconstruct="mixed")
    assert key({**now, "reconstruct": "mixed"}, updated.unread_options()) != before
    assert build("dpruner").unread_options() == ()


def test_dsnot_refines_any_mask_keeping_each_rows_count(tiny_dpruner) -> None:  # noqa: F811
    """Magnitude's mask refined: every row keeps as many weights as before; the attention matrices'
    masks change, the MLP's keep the method's mask (the released default `skip_layer: mlp`)."""
    model, calibration = tiny_dpruner
    plain, _ = pruned(model, calibration, "magnitude")
    refined, reports = pruned(model, calibration, "magnitude", refine="dsnot")
    before, after = masks_of(plain), masks_of(refined)
    for name in before:
        assert torch.equal(before[name].sum(dim=1), after[name].sum(dim=1)), name
        if ".mlp." in name:
            assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if ".self_attn." in n)
    assert all(r.notes["refined"] == (".mlp." not in r.name) for r in reports)
    everywhere, _ = pruned(model, calibration, "magnitude", refine="dsnot", dsnot={"skip_layer": "none"})
    assert any(not torch.equal(before[n], masks_of(everywhere)[n]) for n in before if ".mlp." in n)


def test_refined_and_updated_keeps_the_refined_mask(tiny_dpruner) -> None:  # noqa: F811
    model, calibration = tiny_dpruner
    windows = Calibration(**calibration, reconstruct=calibration["general"])
    refined, _ = pruned(model, windows, "wanda", refine="dsnot", pattern="2:4")
    both, reports = pruned(model, windows, "wanda", refine="dsnot", reconstruct="general", pattern="2:4")
    for (name, keep), refined_keep in zip(masks_of(both).items(), masks_of(refined).values(), strict=True):
        assert torch.equal(keep, refined_keep), name
        assert torch.equal(keep.reshape(keep.shape[0], -1, 4).sum(-1), torch.full_like(
            keep.reshape(keep.shape[0], -1, 4).sum(-1), 2)), name  # still 2:4
    assert all("error_reconstructed" in r.notes and "refined" in r.notes for r in reports)


def test_the_budget_counts_each_follow_up_pass() -> None:
    """Wanda reads its general windows once, DSnoT once more, an update on the same windows once
    more; an update on other windows is one pass over them; D-Pruner's epochs add to its domain
    pass."""
    calib = {"source": "general", "nsamples": 4, "seqlen": 48, "mix": 0.5}

    def passes(name: str, **options) -> dict[str, int]:
        pruner = build(name, **options)
        return pruner.calibration_passes(pruner.calibration_requests(calib))

    assert passes("wanda") == {"general": 1, "domain": 0}
    assert passes("wanda", refine="dsnot") == {"general": 2, "domain": 0}
    assert passes("wanda", refine="dsnot", reconstruct="mixed") == {"general": 2, "domain": 1}
    assert passes("wanda", refine="dsnot", reconstruct="general") == {"general": 3, "domain": 0}
    assert passes("magnitude", reconstruct="domain") == {"general": 0, "domain": 1}
    assert passes("dpruner", epochs=2, reconstruct="mixed") == {"general": 1, "domain": 2}
    assert passes("dpruner", reconstruct="general") == {"general": 2, "domain": 1}  # G's windows again


def test_every_committed_record_keeps_its_key_with_the_follow_up_settings() -> None:
    """Each committed record's method, rebuilt with the follow-up settings at their defaults where
    the record has none, leaves out of the key exactly what the record left out (SparseGPT's and
    D-Pruner's own `percdamp` stays in), so every committed cell is found again."""
    import json

    from core.paths import PROJECT_ROOT
    from pruners import Allocation, from_config

    defaults = {"reconstruct": "none", "refine": "none", "percdamp": 0.01,
                "dsnot": {"max_cycles": 50, "update_threshold": 0.1, "pow_of_var_regrowing": 1.0,
                          "same_sign": False, "skip_layer": "mlp"}}
    paths = sorted((PROJECT_ROOT / "results/leaderboard/records").glob("*.json"))
    assert paths
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        config = record["config"]
        if record["cell"]["pruner"] == "dense":
            continue
        stored = {key: value for key, value in config["pruner"].items() if key != "_target_"}
        pruner_cfg = {**defaults, **config["pruner"]}
        pruner = from_config(pruner_cfg, sparsity=config["sparsity"], pattern=config["pattern"],
                             allocation=Allocation.of(config.get("allocation"), config.get("owl")))
        now = cell_config({**config, "pruner": pruner_cfg}, dense=False, sparsity=config["sparsity"],
                          pattern=config["pattern"], calib=config.get("calib"),
                          allocation=config.get("allocation", "uniform"), unread=pruner.unread_options())
        assert now["pruner"] == {**stored, "_target_": config["pruner"]["_target_"]}, path.name
        assert record_key(now) == record["key"], path.name
