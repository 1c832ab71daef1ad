"""The layer-by-layer driver on tiny random models of several architectures."""

from __future__ import annotations

import pytest
import torch

from core.calibration import Calibration
from core.errors import ConfigError
from core.structure import decoder_layers, model_linears, prunable_linears
from pruners import DriverSettings, build
from pruners.driver import capture
from pruners.pattern import Pattern
from pruners.wanda import wanda_mask
from tests.conftest import FAMILIES

CPU = torch.device("cpu")
QUIET = {"progress": False, "batch_size": 4}


def last_layer_output(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = decoder_layers(model)[-1].register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_replayed_calls_reproduce_the_model(family: str, make_tiny, calib_ids) -> None:
    """Captured layer calls, replayed layer by layer, give the model's own last-layer output:
    every argument (masks, position embeddings, per-layer attention types) was bound."""
    model = make_tiny(family)
    hiddens, calls = capture(model, calib_ids, batch_size=3, device=CPU)
    with torch.no_grad():
        for layer, layer_calls in zip(decoder_layers(model), calls, strict=True):
            hiddens = [call.run(layer, h) for h, call in zip(hiddens, layer_calls, strict=True)]
    assert torch.allclose(torch.cat(hiddens), last_layer_output(model, calib_ids), atol=1e-5)


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"gpt2"}))  # GPT-2 has Conv1D, not Linear
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_layerwise_methods_prune_every_family(family: str, method: str, make_tiny, calib_ids) -> None:
    model = make_tiny(family)
    reports = build(method, sparsity=0.5, driver=QUIET).prune(model, Calibration(ids=calib_ids), CPU)
    linears = model_linears(model)
    assert len(linears) >= 4 * len(decoder_layers(model))
    assert [r.name for r in reports] == list(linears)
    for report, linear in zip(reports, linears.values(), strict=True):
        rows, cols = linear.weight.shape  # widths here are even and at most one 128-column block
        assert int((linear.weight == 0).sum()) == rows * cols // 2
        assert report.error is not None and report.error > 0


def test_model_without_linear_layers_is_refused(make_tiny, calib_ids) -> None:
    with pytest.raises(ConfigError, match="no nn.Linear"):
        build("wanda", driver=QUIET).prune(make_tiny("gpt2"), Calibration(ids=calib_ids), CPU)


def test_first_layer_wanda_mask_equals_independent_computation(make_tiny, calib_ids) -> None:
    """Layer 0 sees the embeddings, so its statistics can be recomputed outside the driver."""
    model = make_tiny("llama")
    layer = decoder_layers(model)[0]
    dense = {n: m.weight.detach().clone() for n, m in prunable_linears(layer).items()}
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda mod, a, name=n: inputs.setdefault(name, []).append(a[0]))
               for n, m in prunable_linears(layer).items()]
    with torch.no_grad():
        model(input_ids=calib_ids)
    for handle in handles:
        handle.remove()
    build("wanda", sparsity=0.5, driver=QUIET).prune(model, Calibration(ids=calib_ids), CPU)
    for name, linear in prunable_linears(layer).items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[name]])
        expected = wanda_mask(dense[name], x.pow(2).sum(0).sqrt(), 0.5, Pattern())
        assert torch.equal(linear.weight != 0, expected & (dense[name] != 0))


def masks_after(method: str, propagate: str, make_tiny, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model = make_tiny("llama")
    driver = DriverSettings(propagate=propagate, progress=False, batch_size=4)
    build(method, sparsity=0.5, driver=driver).prune(model, Calibration(ids=ids), CPU)
    return {name: linear.weight.detach().clone() for name, linear in model_linears(model).items()}


def test_propagate_dense_differs_from_pruned(make_tiny, calib_ids) -> None:
    pruned = masks_after("wanda", "pruned", make_tiny, calib_ids)
    dense = masks_after("wanda", "dense", make_tiny, calib_ids)
    layer0 = [k for k in pruned if k.startswith("layers.0.")]
    later = [k for k in pruned if k.startswith("layers.1.")]
    assert all(torch.equal(pruned[k] != 0, dense[k] != 0) for k in layer0)  # same inputs at layer 0
    assert any(not torch.equal(pruned[k] != 0, dense[k] != 0) for k in later)


def test_offload_moves_one_layer_at_a_time_and_gives_the_same_result(make_tiny, calib_ids,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The model waits on the CPU while each layer visits the device in turn. The device here is
    `cpu:0`, a distinct device object that holds tensors on the CPU, so every move is seen."""
    model = make_tiny("llama")
    layers = list(decoder_layers(model))
    names = {id(model): "model", **{id(layer): f"layer{i}" for i, layer in enumerate(layers)}}
    moves: list[tuple[str, str]] = []
    move = torch.nn.Module.to

    def spy(self: torch.nn.Module, *args, **kwargs) -> torch.nn.Module:
        if id(self) in names:
            moves.append((names[id(self)], repr(torch.device(args[0]))))
        return move(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    driver = DriverSettings(offload=True, progress=False, batch_size=4)
    pruner = build("wanda", sparsity=0.5, driver=driver)
    pruner.prune(model, Calibration(ids=calib_ids), torch.device("cpu", 0))
    monkeypatch.undo()
    visit, home = repr(torch.device("cpu", 0)), repr(torch.device("cpu"))
    assert moves == [("model", home)] + [m for i in range(len(layers)) for m in
                                         ((f"layer{i}", visit), (f"layer{i}", home))]
    reference = masks_after("wanda", "pruned", make_tiny, calib_ids)
    assert all(torch.equal(w.weight, reference[k]) for k, w in model_linears(model).items())


def test_captured_arguments_are_shared_not_copied_per_layer(make_tiny, calib_ids) -> None:
    """Position embeddings are recorded once per batch, not once per layer (memory)."""
    _, calls = capture(make_tiny("llama"), calib_ids, batch_size=3, device=CPU)
    first, second = calls[0][0].kwargs, calls[1][0].kwargs
    assert first["position_embeddings"][0] is second["position_embeddings"][0]
