"""D-Pruner (Zhang et al., "Pruning as a Domain-specific LLM Extractor", NAACL Findings 2024):
keep the weights that matter both for general ability and for the target domain.

1. General importance G = W^2 / [H^-1]_jj per pruned matrix, from a statistics-only pass of the
   shared layer-by-layer driver over general text (dense propagation). Cached on disk, keyed by
   the model's weights and the calibration windows, so an ablation sweep computes it once.
2. Domain importance I = |-g'w + 1/2 (g'w)^2| summed over the domain windows, from full
   back-propagation with the refined gradient g' = g + (regulariser gradient). Each parameter's
   gradient is consumed in a post-accumulate hook and freed at once (the memory of one matrix's
   gradient, never the model's); optionally the weights follow SGD steps w <- w - lr * g'.
3. Mask: keep the top (1 - sparsity) of I (of G for `general_only`) per matrix, per 128-column
   block or per N:M group, applied to the original dense weights.

Memory: the model, I (fp32) and, while the regulariser needs it, G (fp32). With `offload: disk`
(`auto` on a CPU, where memory is the scarce thing) G and the dense copy live in files read one
matrix at a time; otherwise G sits with I (on the device, or the CPU with `buffers_on_cpu`) and
the dense copy in CPU memory."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from core.errors import ConfigError
from pruners.base import (
    Calibration,
    MatrixReport,
    Pruner,
    decoder_layers,
    free_large_blocks_at_once,
    model_linears,
    peak_memory_mb,
    register,
)
from pruners.dpruner_math import (
    anchor_regularizer_grad,
    clip_coefficient,
    exact_regularizer_grads,
    fisher_regularizer_grad,
    general_importance,
    normalized,
    scheduled_lr,
    taylor_importance,
)
from pruners.driver import batches, run_layerwise
from pruners.lm_loss import NextTokenLoss
from pruners.masks import select_mask
from pruners.stats import Hessian
from pruners.tensorfile import TensorFile

log = logging.getLogger(__name__)

IMPORTANCE = ("dual", "general_only", "domain_only")
REGULARIZERS = ("paper", "anchor")
REGULARIZER_GRADS = ("fisher", "exact", "none")
CLIPS = ("lagged", "two_pass")
OFFLOADS = ("auto", "none", "disk")
CACHE_VERSION = b"dpruner-general-v2"

Tensors = Mapping[str, torch.Tensor]  # a dict in memory or a TensorFile on disk


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"pruner.{key}={value!r}; choose one of {list(allowed)}")
    return value


# --- general importance: a driver plug-in and its cache key ------------------------------------

class _GeneralPass:
    """Driver method that turns each matrix's Hessian into G (into a dict or a file) and leaves
    the weight unchanged."""

    def __init__(self, percdamp: float, sink: dict | TensorFile, device: torch.device) -> None:
        self.percdamp = percdamp
        self.sink = sink
        self.device = device
        self.notes: dict[str, dict] = {}

    def make_stats(self, columns: int, device: torch.device) -> Hessian:
        return Hessian(columns, device)

    def prune_matrix(self, name: str, weight: torch.Tensor, stats: Hessian) -> tuple[None, dict]:
        G, notes = general_importance(weight, stats.matrix(), self.percdamp)
        if isinstance(self.sink, TensorFile):
            self.sink.put(name, G)
        else:
            self.sink[name] = G.to(self.device)
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
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
            digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    digest.update(ids.detach().cpu().to(torch.int64).numpy().tobytes())
    digest.update(repr(float(percdamp)).encode())
    return digest.hexdigest()[:24]


# --- domain importance ---------------------------------------------------------------------------

@dataclass
class _Matrix:
    name: str
    param: nn.Parameter
    importance: torch.Tensor  # fp32 sum over batches of |-g'w + (g'w)^2 / 2|
    grad_sum: torch.Tensor  # sum over batches of mean |g|
    reg_sum: torch.Tensor  # sum over batches of mean |regulariser gradient|


@dataclass
class _Step:
    lr: float = 0.0  # scheduled learning rate of this step
    coef: float = 1.0  # clip coefficient applied to this step's update
    score: bool = True  # accumulate importance in this backward
    update: bool = False  # take the SGD step in this backward
    sqnorm: float = 0.0  # squared global norm of the refined gradient


@contextmanager
def _backprop_mode(model: nn.Module, params: list[nn.Parameter], checkpointing: bool,
                   eager: bool) -> Iterator[None]:
    """Gradients for `params` only, dropout off, activation checkpointing on (HF runs it only in
    layers flagged as training, so only the decoder blocks get that flag, not their children),
    eager attention when double backward is needed; all restored afterwards, no .grad left."""
    requires = {p: p.requires_grad for p in model.parameters()}
    training = {m: m.training for m in model.modules()}
    had_input_hook = hasattr(model, "_require_grads_hook")
    enable_ckpt = (checkpointing and hasattr(model, "activation_checkpointing_enable")
                   and getattr(model, "supports_gradient_checkpointing", False)
                   and not getattr(model, "is_activation_checkpointing", False))
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    switch_attention = eager and attention not in (None, "eager")
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.eval()
        if enable_ckpt:
            # reentrant: the forward keeps only each block's input (non-reentrant keeps more)
            model.activation_checkpointing_enable({"use_reentrant": True})
        for layer in decoder_layers(model):
            layer.training = bool(getattr(layer, "gradient_checkpointing", False))
        if switch_attention:
            model.set_attn_implementation("eager")
        yield
    finally:
        if switch_attention:
            model.set_attn_implementation(attention)
        if enable_ckpt:
            model.activation_checkpointing_disable()
            if not had_input_hook and hasattr(model, "_require_grads_hook"):
                model.disable_input_require_grads()
        for module, flag in training.items():
            module.training = flag
        for p, flag in requires.items():
            p.requires_grad_(flag)
            p.grad = None


class _DomainPass:
    """The backward passes over the domain windows: hooks, refined gradient, SGD trajectory."""

    def __init__(self, pruner: DPruner, model: nn.Module, G: Tensors, dense: Tensors | None,
                 device: torch.device, store: torch.device) -> None:
        self.p, self.model = pruner, model
        self.G, self.dense, self.device = G, dense, device
        self.exact = (pruner.regularized and pruner.regularizer == "paper"
                      and pruner.regularizer_grad == "exact")
        self.state = _Step()
        self.matrices = [
            _Matrix(name, linear.weight,
                    torch.zeros(linear.weight.shape, dtype=torch.float32, device=store),
                    torch.zeros((), device=device), torch.zeros((), device=device))
            for name, linear in model_linears(model).items()]

    def run(self, ids: torch.Tensor) -> None:
        """One backward per batch (two with `clip: two_pass`); frozen weights take one epoch,
        since more would only repeat the same gradients."""
        p, state = self.p, self.state
        chunks = batches(ids, p.batch_size)
        total = p.steps(ids)
        warmup = round(p.warmup_ratio * total)
        params = [m.param for m in self.matrices]
        previous_norm = None
        with ExitStack() as stack:
            checkpointing = p.gradient_checkpointing and not self.exact
            stack.enter_context(_backprop_mode(self.model, params, checkpointing, eager=self.exact))
            chunk = None if self.exact else p.loss_chunk  # double backward uses the model's own loss
            self.loss = NextTokenLoss(self.model, chunk, ids[:1, :16].to(self.device))
            if not self.exact:
                for m in self.matrices:
                    stack.callback(m.param.register_post_accumulate_grad_hook(partial(self._hook, m)).remove)
            bar = tqdm(range(total), desc="dpruner domain", unit="batch", disable=not p.driver.progress)
            for step in bar:
                batch = chunks[step % len(chunks)].to(self.device)
                state.lr = scheduled_lr(step, total, warmup, p.lr) if p.update_weights else 0.0
                state.sqnorm, state.score = 0.0, True
                if self.exact:
                    self._exact_step(batch)
                    continue
                two_pass = p.clip == "two_pass" and p.max_grad_norm is not None
                state.update = p.update_weights and not two_pass
                state.coef = clip_coefficient(previous_norm, p.max_grad_norm)
                self.loss.backward(batch)
                previous_norm = math.sqrt(state.sqnorm)
                if p.update_weights and two_pass:  # recompute the same gradients, now clipped
                    state.score, state.update = False, True
                    state.coef = clip_coefficient(previous_norm, p.max_grad_norm)
                    self.loss.backward(batch)

    def _hook(self, m: _Matrix, param: torch.Tensor) -> None:
        """Post-accumulate hook: consume this parameter's gradient, then free it."""
        grad = param.grad.float()
        param.grad = None
        self._consume(m, grad, self._regularizer_grad(m, grad))

    def _regularizer_grad(self, m: _Matrix, grad: torch.Tensor) -> torch.Tensor | None:
        p = self.p
        if not p.regularized:
            return None
        G = self.G[m.name].to(grad.device)
        if p.regularizer == "anchor":
            dense = self.dense[m.name].to(grad.device)
            return anchor_regularizer_grad(m.param.detach(), dense, normalized(G), p.lambda_)
        return fisher_regularizer_grad(grad, G, p.lambda_, p.lr)

    @torch.no_grad()
    def _consume(self, m: _Matrix, grad: torch.Tensor, reg: torch.Tensor | None) -> None:
        state = self.state
        refined = grad if reg is None else grad + reg
        if state.score:
            m.importance += taylor_importance(refined, m.param.detach()).to(m.importance.device)
            m.grad_sum += grad.abs().mean()
            if reg is not None:
                m.reg_sum += reg.abs().mean()
            if self.p.update_weights:
                state.sqnorm += float(refined.pow(2).sum())
        step = state.lr * state.coef
        if state.update and step > 0:
            m.param.add_(refined.to(m.param.dtype), alpha=-step)

    def _exact_step(self, batch: torch.Tensor) -> None:
        """Regulariser gradient 2 lambda alpha^2 H (G * g) by double backward (small models): all
        gradients are alive at once, so the clip uses this step's own norm."""
        params = [m.param for m in self.matrices]
        grads = torch.autograd.grad(self.loss(batch), params, create_graph=True)
        Gs = [self.G[m.name].to(g.device) for m, g in zip(self.matrices, grads, strict=True)]
        regs = exact_regularizer_grads(grads, params, Gs, self.p.lambda_, self.p.lr)
        grads = [g.detach().float() for g in grads]
        norm = math.sqrt(sum(float((g + r).pow(2).sum()) for g, r in zip(grads, regs, strict=True)))
        self.state.update = self.p.update_weights
        self.state.coef = clip_coefficient(norm, self.p.max_grad_norm)
        for m, g, r in zip(self.matrices, grads, regs, strict=True):
            self._consume(m, g, r)

    def notes(self, steps: int) -> dict[str, dict]:
        """Per matrix: regulariser size relative to the gradient (mean |reg| / mean |g|)."""
        notes = {}
        for m in self.matrices:
            grad, reg = float(m.grad_sum), float(m.reg_sum)
            notes[m.name] = {"reg_ratio": reg / grad if grad > 0 else 0.0, "grad_abs_mean": grad / steps}
        return notes


@register("dpruner")
class DPruner(Pruner):
    needs = frozenset({"general", "domain"})

    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", driver=None,
                 importance: str = "dual", lambda_: float = 0.1, lr: float = 3e-2,
                 regularizer: str = "paper", regularizer_grad: str = "fisher",
                 update_weights: bool = True, epochs: int = 1, batch_size: int = 4,
                 warmup_ratio: float = 0.1, max_grad_norm: float | None = 1.0, clip: str = "lagged",
                 blocking: bool = False, block_size: int = 128, percdamp: float = 0.01,
                 gradient_checkpointing: bool = True, buffers_on_cpu: bool = False, offload: str = "auto",
                 offload_dir: str | None = None, loss_chunk: int | None = 64, cache_dir: str | None = None,
                 domain_calib: Mapping[str, Any] | None = None) -> None:
        super().__init__(sparsity, pattern, driver)
        self.importance = _choice("importance", importance, IMPORTANCE)
        self.regularizer = _choice("regularizer", regularizer, REGULARIZERS)
        self.regularizer_grad = _choice("regularizer_grad", regularizer_grad, REGULARIZER_GRADS)
        self.clip = _choice("clip", clip, CLIPS)
        self.offload = _choice("offload", offload, OFFLOADS)
        self.lambda_, self.lr = float(lambda_), float(lr)
        if self.lambda_ < 0 or not self.lr > 0:
            raise ConfigError(f"pruner.lambda_={lambda_!r} must be >= 0 and pruner.lr={lr!r} > 0")
        self.epochs, self.batch_size, self.block_size = int(epochs), int(batch_size), int(block_size)
        if min(self.epochs, self.batch_size, self.block_size) < 1:
            raise ConfigError(f"pruner.epochs={epochs}, batch_size={batch_size} and "
                              f"block_size={block_size} must all be >= 1")
        self.warmup_ratio = float(warmup_ratio)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"pruner.warmup_ratio={warmup_ratio!r} must be in [0, 1)")
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"pruner.max_grad_norm={max_grad_norm!r} must be > 0 or null (no clip)")
        if not 0 < float(percdamp) < 1:
            raise ConfigError(f"pruner.percdamp={percdamp!r} must be in (0, 1)")
        self.percdamp = float(percdamp)
        self.update_weights, self.blocking = bool(update_weights), bool(blocking)
        self.gradient_checkpointing, self.buffers_on_cpu = bool(gradient_checkpointing), bool(buffers_on_cpu)
        self.loss_chunk = None if loss_chunk is None else int(loss_chunk)
        if self.loss_chunk is not None and self.loss_chunk < 1:
            raise ConfigError(f"pruner.loss_chunk={loss_chunk!r} must be >= 1 or null (no chunking)")
        self.offload_dir = Path(os.path.expanduser(str(offload_dir))) if offload_dir else None
        self.cache_dir = Path(os.path.expanduser(str(cache_dir))) if cache_dir else None
        self.domain_calib = dict(domain_calib or {})
        for key in ("nsamples", "seqlen"):
            if key in self.domain_calib and int(self.domain_calib[key]) < 1:
                raise ConfigError(f"pruner.domain_calib.{key}={self.domain_calib[key]!r} must be >= 1")
        self.stages: dict[str, dict[str, float]] = {}  # last prune: seconds and peak memory per stage

    @property
    def regularized(self) -> bool:
        """Whether the domain gradient carries a regulariser term at all."""
        return self.importance == "dual" and self.regularizer_grad != "none" and self.lambda_ > 0

    @property
    def needs_general(self) -> bool:
        return self.importance == "general_only" or self.regularized

    def steps(self, ids: torch.Tensor) -> int:
        per_epoch = math.ceil(ids.shape[0] / self.batch_size)
        return per_epoch * (self.epochs if self.update_weights else 1)

    # --- the three stages ------------------------------------------------------------------------

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        if calibration.general is None and self.needs_general:
            raise ConfigError("D-Pruner needs general calibration windows (calibration.general)")
        if calibration.domain is None and self.importance != "general_only":
            raise ConfigError("D-Pruner needs domain calibration windows (calibration.domain)")
        store = torch.device("cpu") if self.buffers_on_cpu else device
        clock = time.perf_counter()
        with ExitStack() as stack:
            scratch = None
            if self.offload == "disk" or (self.offload == "auto" and device.type == "cpu"):
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="dpruner-", dir=self.offload_dir)))
            G, general_notes = {}, {}
            if self.needs_general:
                G, general_notes = self.general_importance(model, calibration.general, device, store, scratch)
            self.stages = {}
            self._stage("general", clock, device)
            dense, domain_notes = None, {}
            if self.importance == "general_only":
                scores = G
            else:
                if self.update_weights:
                    dense = self._dense_copy(model, scratch)
                scores, domain_notes = self.domain_importance(model, calibration.domain, G, dense,
                                                              device, store)
                del G
            self._stage("domain", clock, device)
            reports = self.apply_masks(model, scores, dense)
        self._stage("mask", clock, device)
        for report in reports:
            report.notes.update(general_notes.get(report.name, {}))
            report.notes.update(domain_notes.get(report.name, {}))
        if self.driver.offload:
            model.to("cpu")
        return reports

    def general_importance(self, model: nn.Module, ids: torch.Tensor, device: torch.device,
                           store: torch.device,
                           scratch: Path | None = None) -> tuple[Tensors, dict[str, dict]]:
        """G for every pruned matrix: from the cache when this model and calibration set were
        seen before; a file read on demand when `scratch` (offload to disk) is given."""
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"general_{general_cache_key(model, ids, self.percdamp)}.bin"
            cached = TensorFile.open(path, store)
            if cached is not None:
                log.info("D-Pruner general importance from cache %s", path)
                G = cached if scratch is not None else {name: cached[name] for name in cached}
                return G, cached.notes
        target = path or (scratch / "general.bin" if scratch is not None else None)
        sink = TensorFile.create(target, store) if target is not None else {}
        method = _GeneralPass(self.percdamp, sink, store)
        run_layerwise(model, ids, method, dataclasses.replace(self.driver, propagate="dense"), device,
                      label="dpruner general")
        if isinstance(sink, dict):
            return sink, method.notes
        stored = sink.finish(method.notes)
        if path is not None:
            log.info("D-Pruner general importance cached at %s", path)
        return (stored if scratch is not None else {name: stored[name] for name in stored}), method.notes

    def domain_importance(self, model: nn.Module, ids: torch.Tensor, G: Tensors, dense: Tensors | None,
                          device: torch.device, store: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
        """I for every pruned matrix from back-propagation over the domain windows."""
        if device.type == "cpu" or store.type == "cpu":
            free_large_blocks_at_once()  # per-matrix gradients come and go: do not hoard them
        model.to(device)
        domain = _DomainPass(self, model, G, dense, device, store)
        domain.run(ids)
        notes = domain.notes(self.steps(ids))
        ratios = [n["reg_ratio"] for n in notes.values()]
        log.info("D-Pruner regulariser / gradient (mean over matrices): %.3g", sum(ratios) / len(ratios))
        return {m.name: m.importance for m in domain.matrices}, notes

    @torch.no_grad()
    def apply_masks(self, model: nn.Module, scores: Tensors, dense: Tensors | None) -> list[MatrixReport]:
        """Keep the top (1 - sparsity) of each score matrix; kept weights are the original ones."""
        group = "block" if self.blocking else "matrix"
        reports = []
        for name, linear in tqdm(model_linears(model).items(), desc="dpruner mask", unit="matrix",
                                 disable=not self.driver.progress):
            start = time.perf_counter()
            weight = linear.weight.data
            keep = select_mask(scores[name], self.sparsity, self.pattern, group, self.block_size)
            original = weight if dense is None else dense[name].to(weight.device)
            weight.copy_(torch.where(keep.to(weight.device), original, torch.zeros((), dtype=weight.dtype)))
            reports.append(MatrixReport(
                name, tuple(weight.shape), float((weight == 0).sum()) / weight.numel(), None,
                time.perf_counter() - start, peak_memory_mb(weight.device)))
        return reports

    def _stage(self, name: str, clock: float, device: torch.device) -> None:
        spent = sum(stage["seconds"] for stage in self.stages.values())
        seconds = time.perf_counter() - clock - spent
        self.stages[name] = {"seconds": seconds, "peak_mb": peak_memory_mb(device)}

    @staticmethod
    def _dense_copy(model: nn.Module, scratch: Path | None) -> Tensors:
        """The original weights, restored after the trajectory (CPU memory, or a scratch file)."""
        linears = model_linears(model)
        if scratch is None:
            return {name: linear.weight.detach().to("cpu", copy=True) for name, linear in linears.items()}
        copy = TensorFile.create(scratch / "dense.bin")
        for name, linear in linears.items():
            copy.put(name, linear.weight)
        return copy.finish()
