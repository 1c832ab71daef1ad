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


def pruned(model: torch.nn.Module, calibration: Calibration, name: str, **options) -> tuple[torch.nn.Module, list]:
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
    assert key({**now, "reconstruct": "mixed"}, build("wanda", reconstruct="mixed").unread_options()) != before
    assert build("dpruner").unread_options() == ()
