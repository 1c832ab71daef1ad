"""The one layer-by-layer driver every calibration-based method runs on.

1. Capture: every decoder layer's `forward` is briefly replaced by a recorder that stores the
   exact call (all positional and keyword arguments: masks, position embeddings, per-layer
   attention types...) and passes the hidden states through untouched; one cheap pass of the
   base model over the calibration batches then yields the inputs of layer 0 and the call of
   every layer, for any architecture, with no signature written down and no exception as
   control flow.
2. Per layer: forward hooks feed each nn.Linear's input to the method's statistics (matrices
   that read the same tensor, like q/k/v, share one accumulator), the method turns statistics
   into new weights, the reconstruction error is measured, and the layer is re-run so that the
   next layer sees pruned outputs (`propagate: pruned`) or keeps the dense outputs.
Only one layer's statistics are alive at a time.

Across processes (core/distributed.py) each rank runs the layers over its own share of the
windows; every statistic is a sum over tokens, so its sums are all-reduced before a matrix is
pruned, every rank then prunes the same way, and rank 0's new weight is broadcast so that the
replicas stay bit-identical. One process: no share, no collective."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from core.distributed import all_reduce_, all_reduce_float, broadcast_, current
from core.memory import peak_memory_mb
from core.row_shards import whole_layer
from core.structure import decoder_layers, model_linears, prunable_linears
from pruners.settings import DriverSettings, MatrixReport


class Statistic(Protocol):
    """A method's per-matrix statistic: a sum over calibration tokens (so ranks can add theirs)."""

    sums: torch.Tensor
    tokens: int

    def add(self, x: torch.Tensor) -> None: ...


class LayerPass:
    """What a pass over the layers plugs into the driver: a pruning method, or a pass that only
    measures (D-Pruner's general importance, OWL's outlier ratios)."""

    def make_stats(self, columns: int, device: torch.device) -> Statistic:
        """A fresh statistic for a matrix of `columns` inputs (shared by matrices of one input)."""
        raise NotImplementedError

    def finish_matrix(self, name: str, weight: torch.Tensor, stats: Any) -> tuple[torch.Tensor | None, dict]:
        """Called once the matrix's statistics are complete: its new weight (None: the weight
        stays as it is) and notes for its report."""
        raise NotImplementedError

    def finish_layer(self, index: int) -> None:
        """Called once every matrix of decoder layer `index` is finished."""


@dataclass
class LayerCall:
    """One recorded call of a decoder layer; the hidden-states slot is left empty (None)."""

    signature: inspect.Signature
    args: tuple
    kwargs: dict
    hidden_name: str

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        bound = self.signature.bind_partial(*self.args, **self.kwargs)
        bound.arguments[self.hidden_name] = hidden
        out = layer(*bound.args, **bound.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _move(obj: Any, device: torch.device, memo: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """Tensors inside nested containers moved to `device`; a tensor shared by several layer calls
    (position embeddings, masks) is moved once and stays shared."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))  # keeping obj alive keeps its id unique
        return memo[id(obj)][1]
    if isinstance(obj, tuple):
        return tuple(_move(o, device, memo) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _move(v, device, memo) for k, v in obj.items()}
    return obj


def _base_model(model: nn.Module) -> nn.Module:
    """The model without its LM head (the capture pass never needs logits)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not model else model


def batches(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [ids[i : i + batch_size] for i in range(0, ids.shape[0], batch_size)]


@torch.no_grad()
def capture(model: nn.Module, ids: torch.Tensor, batch_size: int,
            device: torch.device) -> tuple[list[torch.Tensor], list[list[LayerCall]]]:
    """Inputs of layer 0 per batch, and the recorded call of every layer per batch."""
    layers = decoder_layers(model)
    signatures = [inspect.signature(layer.forward) for layer in layers]
    inputs: list[torch.Tensor] = []
    calls: list[list[LayerCall]] = [[] for _ in layers]
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(index: int) -> Callable[..., Any]:
        signature = signatures[index]
        name = next(iter(signature.parameters))

        def record(*args: Any, **kwargs: Any) -> torch.Tensor:
            if args:
                hidden, args = args[0], (None, *args[1:])
            else:
                hidden = kwargs.pop(name)
            if index == 0:
                inputs.append(hidden.to(device))
            moved_args, moved_kwargs = _move(args, device, memo), _move(kwargs, device, memo)
            calls[index].append(LayerCall(signature, moved_args, moved_kwargs, name))
            return hidden

        return record

    for index, layer in enumerate(layers):
        layer.forward = recorder(index)
    try:
        base = _base_model(model)
        first = next(model.parameters()).device
        for batch in batches(ids, batch_size):
            base(input_ids=batch.to(first), use_cache=False)
    finally:
        for layer in layers:
            del layer.forward
    return inputs, calls


class _Collector:
    """Forward pre-hooks that route each linear's input into its (possibly shared) statistics,
    and keep the first `error_tokens` input rows for the reconstruction error."""

    def __init__(self, linears: dict[str, nn.Linear], make_stats: Callable[[int, torch.device], Any],
                 error_tokens: int) -> None:
        self.linears = linears
        self.make_stats = make_stats
        self.error_tokens = error_tokens
        self.owner: dict[str, str] = {}
        self.stats: dict[str, Any] = {}
        self.samples: dict[str, torch.Tensor] = {}
        self._first: list[tuple[torch.Tensor, str]] = []  # (input tensor, owner) of batch 0

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if name not in self.owner:
                shared = next((owner for seen, owner in self._first if seen is x), None)
                self.owner[name] = shared or name
                self._first.append((x, self.owner[name]))
                if shared is None:
                    self.stats[name] = self.make_stats(x.shape[-1], x.device)
                    rows = x.reshape(-1, x.shape[-1])[: self.error_tokens]
                    self.samples[name] = rows.detach().float().clone()
            if self.owner[name] == name:
                self.stats[name].add(x.detach())

        return hook

    @contextmanager
    def hooks(self) -> Iterator[None]:
        handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.linears.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._first.clear()

    def reduce(self) -> None:
        """Every rank's statistics summed (the same order on every rank: the hooks' order)."""
        for stats in self.stats.values():
            all_reduce_(stats.sums)
            stats.tokens = int(all_reduce_float(float(stats.tokens)))

    def stats_for(self, name: str) -> Any:
        return self.stats[self.owner[name]]

    def sample_for(self, name: str) -> torch.Tensor:
        return self.samples[self.owner[name]]


def relative_error(x: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> float:
    """||W X - W' X||^2 / ||W X||^2 on the sampled input rows x [tokens, in]."""
    dense = x @ old.float().t()
    diff = x @ (old.float() - new.float()).t()
    return float(diff.pow(2).sum() / dense.pow(2).sum().clamp_min(1e-30))


def _run_layer(layer: nn.Module, index: int, hiddens: list[torch.Tensor], calls: list[LayerCall],
               method: LayerPass,
               settings: DriverSettings) -> tuple[list[torch.Tensor], list[MatrixReport]]:
    """One decoder layer: statistics, new weights, reports; returns the inputs of the next layer."""
    distributed = current().distributed
    linears = prunable_linears(layer)
    collector = _Collector(linears, method.make_stats, settings.error_tokens)
    with collector.hooks():
        outputs = [call.run(layer, h) for h, call in zip(hiddens, calls, strict=True)]
    if distributed:
        collector.reduce()
    changed, reports = False, []
    for name, linear in linears.items():
        start = time.perf_counter()
        full_name = f"layers.{index}.{name}"
        new, notes = method.finish_matrix(full_name, linear.weight.data, collector.stats_for(name))
        error = None
        if new is not None:
            if distributed:
                new = broadcast_(new.contiguous())
            error = relative_error(collector.sample_for(name), linear.weight.data, new)
            linear.weight.data.copy_(new.to(linear.weight.dtype))
            changed = True
        reports.append(MatrixReport.since(start, full_name, linear.weight, error, notes))
    del collector
    method.finish_layer(index)
    if settings.propagate == "pruned" and changed:
        outputs = [call.run(layer, h) for h, call in zip(hiddens, calls, strict=True)]
    return outputs, reports


@torch.no_grad()
def run_layerwise(model: nn.Module, ids: torch.Tensor, method: LayerPass,
                  settings: DriverSettings, device: torch.device,
                  label: str = "prune") -> list[MatrixReport]:
    """Drive `method` over every decoder layer (each rank over its share of `ids`; a row-sharded
    layer gathered whole while it runs); returns one report per linear matrix."""
    world = current()
    if world.distributed:
        ids = ids[world.share(ids.shape[0])]
    layers = decoder_layers(model)
    model_linears(model)  # fails clearly when there is nothing to prune
    if settings.offload:
        model.to("cpu")
    hiddens, calls = capture(model, ids, settings.batch_size, device)
    reports: list[MatrixReport] = []
    bar = tqdm(layers, desc=label, unit="layer", disable=not settings.progress)
    for index, layer in enumerate(bar):
        if settings.offload:
            layer.to(device)
        with whole_layer(layer):
            hiddens, layer_reports = _run_layer(layer, index, hiddens, calls[index], method, settings)
        reports += layer_reports
        if settings.offload:
            layer.to("cpu")
        bar.set_postfix(peak_mb=f"{peak_memory_mb(device):.0f}")
    return reports
