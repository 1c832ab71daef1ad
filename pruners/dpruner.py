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
   block or per N:M group, applied to the original dense weights."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
from pruners.masks import select_mask
from pruners.stats import Hessian

log = logging.getLogger(__name__)

IMPORTANCE = ("dual", "general_only", "domain_only")
REGULARIZERS = ("paper", "anchor")
REGULARIZER_GRADS = ("fisher", "exact", "none")
CLIPS = ("lagged", "two_pass")
CACHE_VERSION = b"dpruner-general-v1"


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"pruner.{key}={value!r}; choose one of {list(allowed)}")
    return value


# --- general importance: a driver plug-in and its on-disk cache --------------------------------

class _GeneralPass:
    """Driver method that turns each matrix's Hessian into G and leaves the weight unchanged."""

    def __init__(self, percdamp: float, store: torch.device) -> None:
        self.percdamp = percdamp
        self.store = store
        self.G: dict[str, torch.Tensor] = {}
        self.notes: dict[str, dict] = {}

    def make_stats(self, columns: int, device: torch.device) -> Hessian:
        return Hessian(columns, device)

    def prune_matrix(self, name: str, weight: torch.Tensor, stats: Hessian) -> tuple[None, dict]:
        G, notes = general_importance(weight, stats.matrix(), self.percdamp)
        self.G[name] = G.to(self.store)
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


def _save_atomically(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, staged)
        os.replace(staged, path)
    finally:
        if os.path.exists(staged):
            os.remove(staged)


# --- domain importance: per-matrix buffers and the step state the hooks read --------------------

@dataclass
class _Matrix:
    param: nn.Parameter
    importance: torch.Tensor  # fp32 sum of |-g'w + (g'w)^2 / 2| over batches
    G: torch.Tensor | None  # G (paper form) or G normalised to mean 1 (anchor form)
    dense: torch.Tensor | None  # original weights (CPU), kept when the weights move
    grad_sum: torch.Tensor  # sum over batches of mean |g|
    reg_sum: torch.Tensor  # sum over batches of mean |regulariser gradient|


@dataclass
class _Step:
    lr: float = 0.0  # scheduled learning rate of this step
    coef: float = 1.0  # clip coefficient applied to this step's update
    score: bool = True  # accumulate importance in this backward
    update: bool = False  # take the SGD step in this backward
    sqnorm: float = 0.0  # squared global norm of the refined gradient


def _lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of a batch (unscaled: no loss scaling ever reaches the scores)."""
    return model(input_ids=batch, labels=batch, use_cache=False).loss


@contextmanager
def _backprop_mode(model: nn.Module, params: list[nn.Parameter], checkpointing: bool,
                   eager: bool) -> Iterator[None]:
    """Gradients for `params` only, dropout off, activation checkpointing on (HF runs it only
    in layers flagged as training, so just the decoder blocks get that flag), eager attention
    when double backward is needed; everything restored afterwards, no .grad left behind."""
    requires = {p: p.requires_grad for p in model.parameters()}
    training = {m: m.training for m in model.modules()}
    had_input_hook = hasattr(model, "_require_grads_hook")
    enable_ckpt = (checkpointing and hasattr(model, "activation_checkpointing_enable")
                   and getattr(model, "supports_gradient_checkpointing", False)
                   and not getattr(model, "is_activation_checkpointing", False))
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.eval()
        if enable_ckpt:
            model.activation_checkpointing_enable({"use_reentrant": False})
        for layer in decoder_layers(model):
            layer.training = bool(getattr(layer, "gradient_checkpointing", False))
        if eager and attention not in (None, "eager"):
            model.set_attn_implementation("eager")
        yield
    finally:
        if eager and attention not in (None, "eager"):
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


@register("dpruner")
class DPruner(Pruner):
    needs = frozenset({"general", "domain"})

    def __init__(self, sparsity: float = 0.5, pattern: str = "unstructured", driver=None,
                 importance: str = "dual", lambda_: float = 0.1, lr: float = 3e-2,
                 regularizer: str = "paper", regularizer_grad: str = "fisher",
                 update_weights: bool = True, epochs: int = 1, batch_size: int = 4,
                 warmup_ratio: float = 0.1, max_grad_norm: float | None = 1.0, clip: str = "lagged",
                 blocking: bool = False, block_size: int = 128, percdamp: float = 0.01,
                 gradient_checkpointing: bool = True, buffers_on_cpu: bool = False,
                 cache_dir: str | None = None, domain_calib: Mapping[str, Any] | None = None) -> None:
        super().__init__(sparsity, pattern, driver)
        self.importance = _choice("importance", importance, IMPORTANCE)
        self.regularizer = _choice("regularizer", regularizer, REGULARIZERS)
        self.regularizer_grad = _choice("regularizer_grad", regularizer_grad, REGULARIZER_GRADS)
        self.clip = _choice("clip", clip, CLIPS)
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
        self.cache_dir = Path(os.path.expanduser(str(cache_dir))) if cache_dir else None
        self.domain_calib = dict(domain_calib or {})
        for key in ("nsamples", "seqlen"):
            if key in self.domain_calib and int(self.domain_calib[key]) < 1:
                raise ConfigError(f"pruner.domain_calib.{key}={self.domain_calib[key]!r} must be >= 1")

    @property
    def regularized(self) -> bool:
        """Whether the domain gradient carries a regulariser term at all."""
        return self.importance == "dual" and self.regularizer_grad != "none" and self.lambda_ > 0

    @property
    def needs_general(self) -> bool:
        return self.importance == "general_only" or self.regularized

    # --- the three stages ------------------------------------------------------------------------

    def prune(self, model: nn.Module, calibration: Calibration,
              device: torch.device) -> list[MatrixReport]:
        store = torch.device("cpu") if self.buffers_on_cpu else device
        G, general_notes = {}, {}
        if self.needs_general:
            if calibration.general is None:
                raise ConfigError("D-Pruner needs general calibration windows (calibration.general)")
            G, general_notes = self.general_importance(model, calibration.general, device, store)
        dense, domain_notes = None, {}
        if self.importance == "general_only":
            scores = G
        else:
            if calibration.domain is None:
                raise ConfigError("D-Pruner needs domain calibration windows (calibration.domain)")
            if self.update_weights:
                dense = {n: m.weight.detach().to("cpu", copy=True) for n, m in model_linears(model).items()}
            scores, domain_notes = self.domain_importance(model, calibration.domain, G, dense, device, store)
            del G
        reports = self.apply_masks(model, scores, dense)
        for report in reports:
            report.notes.update(general_notes.get(report.name, {}))
            report.notes.update(domain_notes.get(report.name, {}))
        if self.driver.offload:
            model.to("cpu")
        return reports

    def general_importance(self, model: nn.Module, ids: torch.Tensor, device: torch.device,
                           store: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
        """G for every pruned matrix, read from the cache when this model and calibration set
        were seen before."""
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"general_{general_cache_key(model, ids, self.percdamp)}.pt"
            if path.exists():
                log.info("D-Pruner general importance from cache %s", path)
                payload = torch.load(path, map_location=store, weights_only=True)
                return payload["G"], payload["notes"]
        method = _GeneralPass(self.percdamp, store)
        settings = dataclasses.replace(self.driver, propagate="dense")
        run_layerwise(model, ids, method, settings, device, label="dpruner general")
        if path is not None:
            _save_atomically({"G": method.G, "notes": method.notes}, path)
            log.info("D-Pruner general importance cached at %s", path)
        return method.G, method.notes

    def domain_importance(self, model: nn.Module, ids: torch.Tensor, G: dict[str, torch.Tensor],
                          dense: dict[str, torch.Tensor] | None, device: torch.device,
                          store: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
        """I for every pruned matrix from back-propagation over the domain windows."""
        model.to(device)
        matrices = {}
        for name, linear in model_linears(model).items():
            regularizer = None
            if self.regularized:
                regularizer = normalized(G[name]) if self.regularizer == "anchor" else G[name]
            matrices[name] = _Matrix(
                param=linear.weight,
                importance=torch.zeros(linear.weight.shape, dtype=torch.float32, device=store),
                G=regularizer, dense=None if dense is None else dense[name],
                grad_sum=torch.zeros((), device=device), reg_sum=torch.zeros((), device=device))
        exact = self.regularized and self.regularizer == "paper" and self.regularizer_grad == "exact"
        params = [m.param for m in matrices.values()]
        with _backprop_mode(model, params, self.gradient_checkpointing and not exact, eager=exact):
            self._trajectory(model, ids, matrices, exact, device)
        notes = {}
        for name, m in matrices.items():
            grad, reg = float(m.grad_sum), float(m.reg_sum)
            notes[name] = {"reg_ratio": reg / grad if grad > 0 else 0.0,
                           "grad_abs_mean": grad / self._steps(ids)}
        ratios = [n["reg_ratio"] for n in notes.values()]
        log.info("D-Pruner regulariser / gradient (mean over matrices): %.3g", sum(ratios) / len(ratios))
        return {name: m.importance for name, m in matrices.items()}, notes

    @torch.no_grad()
    def apply_masks(self, model: nn.Module, scores: dict[str, torch.Tensor],
                    dense: dict[str, torch.Tensor] | None) -> list[MatrixReport]:
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

    # --- the backward passes -----------------------------------------------------------------

    def _steps(self, ids: torch.Tensor) -> int:
        per_epoch = math.ceil(ids.shape[0] / self.batch_size)
        return per_epoch * (self.epochs if self.update_weights else 1)

    def _trajectory(self, model: nn.Module, ids: torch.Tensor, matrices: dict[str, _Matrix],
                    exact: bool, device: torch.device) -> None:
        """One backward per batch (two with `clip: two_pass`); frozen weights take one epoch,
        since more would only repeat the same gradients."""
        chunks = batches(ids, self.batch_size)
        total = self._steps(ids)
        warmup = round(self.warmup_ratio * total)
        state = _Step()
        handles = [] if exact else [
            m.param.register_post_accumulate_grad_hook(partial(self._hook, m, state))
            for m in matrices.values()]
        previous_norm = None
        try:
            for step in tqdm(range(total), desc="dpruner domain", unit="batch",
                             disable=not self.driver.progress):
                batch = chunks[step % len(chunks)].to(device)
                state.lr = scheduled_lr(step, total, warmup, self.lr) if self.update_weights else 0.0
                state.sqnorm, state.score = 0.0, True
                if exact:
                    self._exact_step(model, batch, matrices, state)
                    continue
                two_pass = self.clip == "two_pass" and self.max_grad_norm is not None
                state.update = self.update_weights and not two_pass
                state.coef = clip_coefficient(previous_norm, self.max_grad_norm)
                _lm_loss(model, batch).backward()
                previous_norm = math.sqrt(state.sqnorm)
                if self.update_weights and two_pass:  # recompute the same gradients, now clipped
                    state.score, state.update = False, True
                    state.coef = clip_coefficient(previous_norm, self.max_grad_norm)
                    _lm_loss(model, batch).backward()
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, m: _Matrix, state: _Step, param: torch.Tensor) -> None:
        """Post-accumulate hook: consume this parameter's gradient, then free it."""
        grad = param.grad.float()
        param.grad = None
        self._consume(m, state, grad, self._regularizer_grad(m, grad))

    def _regularizer_grad(self, m: _Matrix, grad: torch.Tensor) -> torch.Tensor | None:
        if not self.regularized:
            return None
        G = m.G.to(grad.device)
        if self.regularizer == "anchor":
            return anchor_regularizer_grad(m.param.detach(), m.dense.to(grad.device), G, self.lambda_)
        return fisher_regularizer_grad(grad, G, self.lambda_, self.lr)

    @torch.no_grad()
    def _consume(self, m: _Matrix, state: _Step, grad: torch.Tensor, reg: torch.Tensor | None) -> None:
        refined = grad if reg is None else grad + reg
        if state.score:
            m.importance += taylor_importance(refined, m.param.detach()).to(m.importance.device)
            m.grad_sum += grad.abs().mean()
            if reg is not None:
                m.reg_sum += reg.abs().mean()
            if self.update_weights:
                state.sqnorm += float(refined.pow(2).sum())
        step = state.lr * state.coef
        if state.update and step > 0:
            m.param.add_(refined.to(m.param.dtype), alpha=-step)

    def _exact_step(self, model: nn.Module, batch: torch.Tensor, matrices: dict[str, _Matrix],
                    state: _Step) -> None:
        """Regulariser gradient 2 lambda alpha^2 H (G * g) by double backward (small models): all
        gradients are alive at once, so the clip uses this step's own norm."""
        items = list(matrices.values())
        params = [m.param for m in items]
        grads = torch.autograd.grad(_lm_loss(model, batch), params, create_graph=True)
        Gs = [m.G.to(g.device) for m, g in zip(items, grads, strict=True)]
        regs = exact_regularizer_grads(grads, params, Gs, self.lambda_, self.lr)
        grads = [g.detach().float() for g in grads]
        norm = math.sqrt(sum(float((g + r).pow(2).sum()) for g, r in zip(grads, regs, strict=True)))
        state.update = self.update_weights
        state.coef = clip_coefficient(norm, self.max_grad_norm)
        for m, g, r in zip(items, grads, regs, strict=True):
            self._consume(m, state, g, r)
