"""Stage 2 of D-Pruner: the domain importance I = |-g'w + 1/2 (g'w)^2| of every pruned weight,
summed over the domain windows, from full back-propagation with the refined gradient
g' = g + (regulariser gradient).

Three separable parts, so that a sharded run can swap the loop and keep the rest:
- `GradientConsumer`: a post-accumulate hook per matrix that turns the gradient into the refined
  gradient, adds its Taylor importance, takes the SGD step, and frees the gradient at once (the
  memory of one matrix's gradient, never the model's);
- `Trajectory`: the SGD schedule along which importance is collected (linear warm-up and decay,
  the global grad-norm clip, lagged by one step or recomputed in a second pass);
- `domain_importance`: the loop over batches that runs the backward passes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from core.calibration import ExampleWindows
from core.memory import large_blocks_returned_at_once
from core.structure import decoder_layers, model_linears
from pruners.dpruner.formulas import (
    anchor_regularizer_grad,
    clip_coefficient,
    exact_regularizer_grads,
    fisher_regularizer_grad,
    normalized,
    scheduled_lr,
    taylor_importance,
)
from pruners.dpruner.lm_loss import NextTokenLoss
from pruners.dpruner.options import DPrunerOptions
from pruners.dpruner.resume import DomainPassResume
from pruners.driver import batches

Tensors = Mapping[str, torch.Tensor]
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # windows, or whole examples with their mask


@dataclass
class MatrixScore:
    name: str
    param: nn.Parameter
    importance: torch.Tensor  # fp32 sum over batches of |-g'w + (g'w)^2 / 2|
    grad_sum: torch.Tensor  # sum over batches of mean |g|
    reg_sum: torch.Tensor  # sum over batches of mean |regulariser gradient|


@dataclass
class Pass:
    """What one backward pass does with the gradients it produces."""

    lr: float = 0.0  # scheduled learning rate of this step
    coef: float = 1.0  # clip coefficient applied to this step's update
    score: bool = True  # accumulate importance
    update: bool = False  # take the SGD step
    sqnorm: float = 0.0  # squared global norm of the refined gradient (filled while scoring)


class Trajectory:
    """The backward passes of each step: one with the lagged clip (the previous step's norm; the
    first step is not taken), or with `two_pass` a scoring pass that measures this step's norm and
    a second pass that recomputes the same gradients and takes the clipped step. The exact
    regulariser has all gradients at once and clips each step by its own norm (one pass)."""

    def __init__(self, options: DPrunerOptions, total: int) -> None:
        self.options, self.total = options, total
        self.warmup = round(options.warmup_ratio * total)
        self.previous_norm: float | None = None

    def passes(self, step: int) -> Iterator[Pass]:
        o = self.options
        lr = scheduled_lr(step, self.total, self.warmup, o.lr) if o.update_weights else 0.0
        two_pass = o.clip == "two_pass" and o.max_grad_norm is not None and not o.exact
        first = Pass(lr, clip_coefficient(self.previous_norm, o.max_grad_norm), score=True,
                     update=o.update_weights and not two_pass)
        yield first
        self.previous_norm = math.sqrt(first.sqnorm)
        if o.update_weights and two_pass:
            yield Pass(lr, clip_coefficient(self.previous_norm, o.max_grad_norm), score=False, update=True)


class GradientConsumer:
    """Refined gradient, importance and SGD step of one matrix the moment its gradient exists."""

    def __init__(self, options: DPrunerOptions, G: Tensors, dense: Tensors | None) -> None:
        self.options, self.G, self.dense = options, G, dense
        self.current = Pass()

    def hook(self, m: MatrixScore, param: torch.Tensor) -> None:
        """Post-accumulate hook: consume this parameter's gradient, then free it."""
        grad = param.grad.float()
        param.grad = None
        self.take(m, grad)

    def take(self, m: MatrixScore, grad: torch.Tensor) -> None:
        """Consume one matrix's (fp32) gradient with its regulariser term."""
        self.consume(m, grad, self.regularizer_grad(m, grad))

    def regularizer_grad(self, m: MatrixScore, grad: torch.Tensor) -> torch.Tensor | None:
        o = self.options
        if not o.regularized:
            return None
        G = self.G[m.name].to(grad.device)
        if o.regularizer == "anchor":
            dense = self.dense[m.name].to(grad.device)
            return anchor_regularizer_grad(m.param.detach(), dense, normalized(G), o.lambda_)
        return fisher_regularizer_grad(grad, G, o.lambda_, o.lr)

    @torch.no_grad()
    def consume(self, m: MatrixScore, grad: torch.Tensor, reg: torch.Tensor | None) -> None:
        now = self.current
        refined = grad if reg is None else grad + reg
        if now.score:
            m.importance += taylor_importance(refined, m.param.detach()).to(m.importance.device)
            m.grad_sum += grad.abs().mean()
            if reg is not None:
                m.reg_sum += reg.abs().mean()
            if self.options.update_weights:
                now.sqnorm += float(refined.pow(2).sum())
        step = now.lr * now.coef
        if now.update and step > 0:
            m.param.add_(refined.to(m.param.dtype), alpha=-step)


@contextmanager
def backprop_mode(model: nn.Module, params: list[nn.Parameter], checkpointing: bool,
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


def exact_step(loss: NextTokenLoss, batch: torch.Tensor, mask: torch.Tensor | None,
               matrices: list[MatrixScore], consumer: GradientConsumer, current: Pass) -> None:
    """Regulariser gradient 2 lambda alpha^2 H (G * g) by double backward (small models): all
    gradients are alive at once, so the clip uses this step's own norm."""
    o = consumer.options
    params = [m.param for m in matrices]
    grads = torch.autograd.grad(loss(batch, mask), params, create_graph=True)
    Gs = [consumer.G[m.name].to(g.device) for m, g in zip(matrices, grads, strict=True)]
    regs = exact_regularizer_grads(grads, params, Gs, o.lambda_, o.lr)
    grads = [g.detach().float() for g in grads]
    norm = math.sqrt(sum(float((g + r).pow(2).sum()) for g, r in zip(grads, regs, strict=True)))
    current.update, current.coef = o.update_weights, clip_coefficient(norm, o.max_grad_norm)
    consumer.current = current
    for m, g, r in zip(matrices, grads, regs, strict=True):
        consumer.consume(m, g, r)


def score_buffers(name: str, param: nn.Parameter | torch.Tensor, store: torch.device,
                  device: torch.device) -> MatrixScore:
    """Zeroed importance (fp32, on `store`) and regulariser sums of one matrix (or shard)."""
    return MatrixScore(name, param, torch.zeros(param.shape, dtype=torch.float32, device=store),
                       torch.zeros((), device=device), torch.zeros((), device=device))


def run_trajectory(options: DPrunerOptions, chunks: list[Batch], total: int,
                   backward: Callable[[Batch, Pass], None], progress: bool,
                   resume: DomainPassResume | None = None, matrices: list[MatrixScore] | None = None) -> None:
    """Every step's passes over the batches in turn (epochs wrap around); with `resume`, from
    the step an earlier run of the cell saved, saving its own progress as it goes."""
    trajectory = Trajectory(options, total)
    start = resume.restore(matrices, trajectory) if resume else 0
    for step in tqdm(range(start, total), initial=start, total=total, desc="dpruner domain", unit="batch",
                     disable=not progress):
        batch = chunks[step % len(chunks)]
        for current in trajectory.passes(step):
            backward(batch, current)
        if resume:
            resume.after_step(step + 1, total, matrices, trajectory, options.update_weights)


def matrix_notes(matrices: list[MatrixScore], total: int) -> dict[str, dict]:
    """Per matrix the regulariser's size next to the gradient, and the mean |g| per step."""
    notes = {}
    for m in matrices:
        grad, reg = float(m.grad_sum), float(m.reg_sum)
        notes[m.name] = {"reg_ratio": reg / grad if grad > 0 else 0.0, "grad_abs_mean": grad / total}
    return notes


def domain_batches(windows: torch.Tensor | ExampleWindows, size: int) -> list[Batch]:
    """Batches of `size` windows; whole examples each padded to its longest, with its mask."""
    return windows.batches(size) if isinstance(windows, ExampleWindows) else batches(windows, size)


def domain_importance(model: nn.Module, ids: torch.Tensor | ExampleWindows, G: Tensors, dense: Tensors | None,
                      options: DPrunerOptions, device: torch.device, store: torch.device,
                      progress: bool = True, resume: DomainPassResume | None = None,
                      ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """I for every pruned matrix over the domain windows `ids` (or whole examples), and per
    matrix the size of the regulariser next to the gradient (mean |reg| / mean |g|). With
    `resume` the pass picks up where an earlier run of the cell saved it, and saves as it goes."""
    total = options.steps(len(ids))
    probe = (ids.ids if isinstance(ids, ExampleWindows) else ids)[:1, :16]
    with ExitStack() as stack:
        stack.enter_context(large_blocks_returned_at_once(options.returns_freed_memory(device, store)))
        model.to(device)
        matrices = [score_buffers(name, linear.weight, store, device)
                    for name, linear in model_linears(model).items()]
        consumer = GradientConsumer(options, G, dense)
        stack.enter_context(backprop_mode(model, [m.param for m in matrices],
                                          options.gradient_checkpointing and not options.exact,
                                          eager=options.exact))
        chunk = None if options.exact else options.loss_chunk  # double backward: the model's own loss
        loss = NextTokenLoss(model, chunk, probe.to(device))
        if not options.exact:
            for m in matrices:
                stack.callback(m.param.register_post_accumulate_grad_hook(partial(consumer.hook, m)).remove)

        def backward(batch: Batch, current: Pass) -> None:
            tokens, mask = batch if isinstance(batch, tuple) else (batch, None)
            tokens, mask = tokens.to(device), None if mask is None else mask.to(device)
            if options.exact:
                exact_step(loss, tokens, mask, matrices, consumer, current)
            else:
                consumer.current = current
                loss.backward(tokens, mask)

        run_trajectory(options, domain_batches(ids, options.batch_size), total, backward, progress,
                       resume, matrices)
    return {m.name: m.importance for m in matrices}, matrix_notes(matrices, total)
