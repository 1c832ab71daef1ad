"""Stage 1 of D-Pruner: the general importance G = W^2 / [H^-1]_jj of every pruned matrix, from a
statistics-only pass of the shared layer-by-layer driver over general text (dense propagation:
the weights are not changed). G is cached on disk, keyed by the model's weights and the exact
calibration windows, so an ablation sweep computes it once; the cache is checksummed, and a
damaged entry is discarded with one warning and recomputed.

Across processes the driver sums each Hessian over the ranks, so every rank derives the same G;
the cache is used only when every rank finds it, and only rank 0 writes it. With `own_rows` each
rank keeps in memory only its rows of each G (the rows its FSDP shard of the weight has), one
matrix at a time, so no rank ever holds the whole G; a file (cache, scratch) holds the whole G and
is cut as it is read."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from core.distributed import OwnRows, all_agree, current, local_rows
from core.files import Damaged, discard_damaged, remove_stale_partials
from core.row_shards import is_row_shard, whole_rows
from core.structure import model_linears
from pruners.dpruner.formulas import general_importance
from pruners.dpruner.options import DPrunerOptions
from pruners.dpruner.tensorfile import TensorFile
from pruners.driver import LayerPass, run_layerwise
from pruners.hessian import Hessian
from pruners.settings import DriverSettings

log = logging.getLogger(__name__)

CACHE_VERSION = b"dpruner-general-v2"

Tensors = Mapping[str, torch.Tensor]  # a dict in memory or a TensorFile on disk


def _held(G: torch.Tensor, own_rows: bool) -> torch.Tensor:
    """What a rank keeps in memory of one matrix's G: all of it, or a copy of its own rows (so
    the whole matrix can go)."""
    return local_rows(G).clone() if own_rows else G


class GeneralPass(LayerPass):
    """Layer pass that turns each matrix's Hessian into G (into a dict or a file) and leaves
    the weight unchanged."""

    def __init__(self, percdamp: float, sink: dict | TensorFile, store: torch.device,
                 own_rows: bool = False) -> None:
        self.percdamp = percdamp
        self.sink = sink
        self.store = store
        self.own_rows = own_rows
        self.notes: dict[str, dict] = {}

    def make_stats(self, columns: int, device: torch.device) -> Hessian:
        return Hessian(columns, device)

    def finish_matrix(self, name: str, weight: torch.Tensor, stats: Hessian) -> tuple[None, dict]:
        G, notes = general_importance(weight, stats.matrix(), self.percdamp)
        if isinstance(self.sink, TensorFile):
            self.sink.put(name, G)
        else:
            self.sink[name] = _held(G, self.own_rows).to(self.store)
        self.notes[name] = notes
        return None, notes


def general_cache_key(model: nn.Module, ids: torch.Tensor, percdamp: float) -> str:
    """Fingerprint of what G depends on: architecture, weights (a strided sample of every
    parameter), the exact calibration windows, and the dampening."""
    digest = hashlib.sha256(CACHE_VERSION)
    config = getattr(model, "config", None)
    digest.update(type(model).__name__.encode())
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    linears = model_linears(model).values()
    row_shards = {id(linear.weight): linear for linear in linears if is_row_shard(linear)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            whole = whole_rows(row_shards[id(param)]) if id(param) in row_shards else param.detach()
            flat = whole.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
            digest.update(f"{name}{tuple(whole.shape)}{param.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    digest.update(ids.detach().cpu().to(torch.int64).numpy().tobytes())
    digest.update(repr(float(percdamp)).encode())
    return digest.hexdigest()[:24]


def _cached(path: Path, store: torch.device) -> TensorFile | None:
    """The cached G, or None: absent, or damaged (then discarded with one warning, so the caller
    recomputes it rather than trusting or tripping over it)."""
    try:
        return TensorFile.open(path, store, verify=True)
    except Damaged as err:
        discard_damaged("D-Pruner general-importance cache", err, path, Path(f"{path}.json"))
        return None


def _loaded(stored: TensorFile, on_disk: bool, own_rows: bool) -> Tensors:
    """Read on demand from the file (disk scratch) or all into memory (this rank's rows only
    with `own_rows`, one matrix at a time)."""
    if on_disk:
        return OwnRows(stored) if own_rows else stored
    return {name: _held(stored[name], own_rows) for name in stored}


def compute_general_importance(model: nn.Module, ids: torch.Tensor, options: DPrunerOptions,
                               driver: DriverSettings, device: torch.device, store: torch.device,
                               scratch: Path | None = None,
                               own_rows: bool = False) -> tuple[Tensors, dict[str, dict]]:
    """G for every pruned matrix: from the cache when this model and calibration set were seen
    before; a file read on demand when `scratch` (G on disk) is given, else a dict on `store`.
    `own_rows`: only this rank's rows of each matrix (the FSDP domain pass's share)."""
    path = None
    if options.cache_dir is not None:
        if current().leader:
            remove_stale_partials(options.cache_dir)
        path = options.cache_dir / f"general_{general_cache_key(model, ids, options.percdamp)}.bin"
        cached = _cached(path, store)
        if all_agree(cached is not None):
            log.info("D-Pruner general importance from cache %s", path)
            return _loaded(cached, scratch is not None, own_rows), cached.notes
        path = path if current().leader else None  # one writer
    settings = dataclasses.replace(driver, propagate="dense")
    target = path or (scratch / "general.bin" if scratch is not None else None)
    if target is None:
        method = GeneralPass(options.percdamp, {}, store, own_rows)
        run_layerwise(model, ids, method, settings, device, label="dpruner general")
        return method.sink, method.notes
    with TensorFile.writing(target, store, checksum=path is not None) as sink:
        method = GeneralPass(options.percdamp, sink, store)
        run_layerwise(model, ids, method, settings, device, label="dpruner general")
        sink.notes = method.notes
    if path is not None:
        log.info("D-Pruner general importance cached at %s", path)
    return _loaded(TensorFile.open(target, store), scratch is not None, own_rows), method.notes
