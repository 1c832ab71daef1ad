"""D-Pruner (Zhang et al., "Pruning as a Domain-specific LLM Extractor", NAACL Findings 2024):
keep the weights that matter both for general ability and for the target domain.

1. General importance G (general.py), 2. domain importance I from the refined loss (domain.py),
3. mask: keep the top (1 - sparsity) of I (of G for `general_only`) per matrix, per column block
or per N:M group, applied to the original dense weights (below).

Across processes (torchrun, SLURM) the general pass is data-parallel (the driver sums the
Hessians over the ranks) and the domain pass runs on FSDP (sharded.py); the mask is the same.

Memory: the model, I (fp32) and, while the regulariser needs it, G (fp32). With G on disk
(`scratch: disk`, or `auto` on a CPU) G and the dense copy live in files read one matrix at a time;
otherwise G sits with I (on the device, or the CPU with `buffers_on_cpu`) and the dense copy in
CPU memory."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from core.calibration import Calibration, WindowRequest
from core.checks import as_int
from core.distributed import World, current, local_rows
from core.errors import ConfigError
from core.files import scratch_folder
from core.memory import peak_memory_mb
from core.row_shards import is_row_shard
from core.structure import model_linears
from pruners.allocation import Allocation
from pruners.base import MatrixReport, Pruner, register
from pruners.dpruner.domain import domain_importance
from pruners.dpruner.general import Tensors, compute_general_importance
from pruners.dpruner.options import DPrunerOptions
from pruners.dpruner.resume import DomainPassResume
from pruners.dpruner.sharded import sharded_domain_importance
from pruners.dpruner.tensorfile import TensorFile
from pruners.mask_update import dense_weights
from pruners.masks import select_mask

log = logging.getLogger(__name__)


class StageClock:
    """Seconds and peak memory of each stage, in order."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.last, self.stages = device, time.perf_counter(), {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = {"seconds": now - self.last, "peak_mb": peak_memory_mb(self.device)}
        self.last = now


def dense_copy(model: nn.Module, scratch: Path | None) -> Tensors:
    """The original weights, restored after the trajectory (CPU memory, or a scratch file)."""
    if scratch is None:
        return dense_weights(model)
    with TensorFile.writing(scratch / "dense.bin") as copy:
        for name, linear in model_linears(model).items():
            copy.put(name, linear.weight)
    return TensorFile.open(scratch / "dense.bin")


def check_world(o: DPrunerOptions, world: World) -> None:
    """Across processes every global batch must split evenly (so that FSDP's averaged gradient is
    the batch mean), and the double-backward regulariser is single-process only."""
    if not world.distributed or not o.needs_domain:
        return
    if o.whole_examples:  # batches of unequal token counts would not average to the batch mean
        raise ConfigError("pruner.domain_calib.windows=whole_examples runs on one process only")
    if o.exact:
        raise ConfigError("pruner.regularizer_grad=exact (double backward) runs on one process only")
    for key, value in (("pruner.batch_size", o.batch_size), ("pruner.domain_calib.nsamples",
                                                             o.domain_calib["nsamples"])):
        if value % world.size:
            raise ConfigError(f"{key}={value} must be a multiple of the {world.size} processes "
                              "(every domain batch is split evenly across them)")


@register("dpruner")
class DPruner(Pruner):
    row_shards = True
    moves_whole_model = True  # the domain pass back-propagates through the whole model
    mask_reads_percdamp = True  # G's Hessian dampening

    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", driver=None,
                 allocation: Allocation | None = None, reconstruct: str = "none", refine: str = "none",
                 dsnot: Mapping[str, Any] | None = None, **options: Any) -> None:
        self.options = DPrunerOptions(**options)
        super().__init__(sparsity, pattern, driver, allocation, reconstruct=reconstruct, refine=refine,
                         percdamp=self.options.percdamp, dsnot=dsnot)

    def check_world(self, world: World) -> None:
        check_world(self.options, world)

    def calibration_passes(self, requests: Mapping[str, WindowRequest]) -> dict[str, int]:
        """The domain windows run through once per epoch while the weights follow SGD; frozen
        weights take one epoch (`DPrunerOptions.steps`)."""
        passes = super().calibration_passes(requests)
        if self.options.needs_domain and self.options.update_weights:
            passes["domain"] += self.options.epochs - 1
        return passes

    def optimizer_steps(self, windows: Mapping[str, Mapping[str, Any]]) -> int | None:
        """The SGD steps of the domain pass: one per batch of `batch_size` domain windows (the last
        may be short; whole examples are counted as drawn), every epoch; None with frozen weights
        or without a domain pass."""
        o = self.options
        return o.steps(windows["domain"]["windows"]) if o.needs_domain and o.update_weights else None

    def calibration_requests(self, calib: Mapping[str, Any]) -> dict[str, WindowRequest]:
        """General windows (the `calib` group's sizes, always C4-like general text) while G is
        needed; domain windows of the pruner's own `domain_calib` sizes unless only G ranks."""
        o, requests = self.options, super().calibration_requests(calib)  # `ids`, `reconstruct`
        if o.needs_general:
            requests["general"] = WindowRequest("general", as_int("calib.nsamples", calib["nsamples"]),
                                                as_int("calib.seqlen", calib["seqlen"]),
                                                calib_keys=("nsamples", "seqlen"))
        if o.needs_domain:
            size, sources = o.domain_calib, o.domain_calib["sources"]
            requests["domain"] = WindowRequest("domain", size["nsamples"], size["seqlen"],
                                               windows=size["windows"],
                                               sources=None if sources is None else tuple(sources.items()))
        return requests

    def prune_model(self, model: nn.Module, calibration: Calibration,
                    device: torch.device) -> list[MatrixReport]:
        o = self.options
        for slot, needed in (("general", o.needs_general), ("domain", o.needs_domain)):
            if needed and calibration.get(slot) is None:
                raise ConfigError(f"D-Pruner needs {slot} calibration windows (calibration slot {slot!r})")
        store = torch.device("cpu") if o.buffers_on_cpu else device
        clock = StageClock(device)
        with ExitStack() as stack:
            scratch = None
            if o.on_disk(device):
                scratch = stack.enter_context(scratch_folder(o.scratch_dir, "dpruner"))
            G, general_notes = {}, {}
            if o.needs_general:
                sharded = current().distributed and o.needs_domain  # the FSDP pass needs its rows only
                G, general_notes = compute_general_importance(model, calibration["general"], o, self.driver,
                                                              device, store, scratch, own_rows=sharded)
            clock.mark("general")
            dense, domain_notes = None, {}
            if not o.needs_domain:
                scores = G
            elif current().distributed:  # FSDP; the loaded model stays unchanged: it is the dense copy
                scores, domain_notes = sharded_domain_importance(model, calibration["domain"], G, o, device,
                                                                 store, self.driver.progress)
            else:
                if o.update_weights:  # with a follow-up, the copy the base class took for it
                    dense = self.dense if self.dense is not None else dense_copy(model, scratch)
                resume = DomainPassResume.for_pass(self.resume_folder, o, calibration["domain"])
                scores, domain_notes = domain_importance(model, calibration["domain"], G, dense, o, device,
                                                         store, self.driver.progress, resume)
                self.resumed = resume.report() if resume else None
            if o.needs_domain:
                ratio = statistics.fmean(n["reg_ratio"] for n in domain_notes.values())
                log.info("D-Pruner regulariser / gradient (mean over matrices): %.3g", ratio)
            del G
            clock.mark("domain")
            reports = self.apply_masks(model, scores, dense)
        clock.mark("mask")
        if self.resumed:  # the domain stage's seconds include the earlier runs'
            domain = clock.stages["domain"]
            domain["seconds"] += self.resumed["seconds_before_resume"]
            domain["resumed_at_step"] = self.resumed["resumed_at_step"]
        self.stages = clock.stages
        for report in reports:
            report.notes.update(general_notes.get(report.name, {}))
            report.notes.update(domain_notes.get(report.name, {}))
        if self.driver.offload:
            model.to("cpu")
        return reports

    def keep_mask(self, name: str, scores: Tensors) -> torch.Tensor:
        """The top (1 - sparsity) of a matrix's score (within column blocks with `blocking`)."""
        group = "block" if self.options.blocking else "matrix"
        return select_mask(scores[name], self.sparsity_of(name), self.pattern, group, self.options.block_size)

    @torch.no_grad()
    def apply_masks(self, model: nn.Module, scores: Tensors, dense: Tensors | None) -> list[MatrixReport]:
        """Keep the top (1 - sparsity) of each score matrix; kept weights are the original ones."""
        reports = []
        for name, linear in tqdm(model_linears(model).items(), desc="dpruner mask", unit="matrix",
                                 disable=not self.driver.progress):
            start = time.perf_counter()
            weight = linear.weight.data
            keep = self.keep_mask(name, scores)
            self.remember(name, keep)
            if is_row_shard(linear):  # this rank's rows of the whole matrix's mask
                keep = local_rows(keep)
            original = weight if dense is None else dense[name].to(weight.device)
            weight.copy_(torch.where(keep.to(weight.device), original, torch.zeros((), dtype=weight.dtype)))
            report = MatrixReport.since(start, name, weight)
            reports.append(replace(report, shape=(linear.out_features, linear.in_features)))
        return reports
