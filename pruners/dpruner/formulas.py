"""D-Pruner's formulas as pure tensor functions (docs/dpruner.md).

Notation: W a pruned matrix, H its layer Hessian 2XX^T/n on general text, g the gradient of the
domain loss, lambda the regulariser weight, alpha the SGD step size."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pruners.hessian import damped_inverse


def general_importance(weight: torch.Tensor, hessian: torch.Tensor,
                       percdamp: float = 0.01) -> tuple[torch.Tensor, dict]:
    """G = W^2 / [H^-1]_jj, the OBS error of removing each weight, with SparseGPT's dampening.
    Weights of dead inputs (never active on the calibration text) cost nothing: G = 0."""
    inverse = damped_inverse(hessian, percdamp)
    G = weight.detach().float().pow(2) / inverse.inverse_diag.unsqueeze(0)
    G[:, inverse.dead] = 0.0
    notes = {"percdamp": inverse.percdamp, "damp_retries": inverse.retries,
             "dead_inputs": int(inverse.dead.sum())}
    return G, notes


def fisher_regularizer_grad(grad: torch.Tensor, G: torch.Tensor, lambda_: float,
                            alpha: float) -> torch.Tensor:
    """Gradient of lambda alpha^2 sum G g^2 with dg/dw taken as the empirical Fisher g^2:
    2 lambda alpha^2 G g^3."""
    return (2.0 * lambda_ * alpha**2) * G * grad.pow(3)


def anchor_regularizer_grad(weight: torch.Tensor, dense: torch.Tensor, G_normalized: torch.Tensor,
                            lambda_: float) -> torch.Tensor:
    """Gradient of lambda sum G^ (w - w0)^2 (the anchored form): 2 lambda G^ (w - w0)."""
    return (2.0 * lambda_) * G_normalized * (weight.float() - dense.float())


def normalized(G: torch.Tensor) -> torch.Tensor:
    """G scaled to mean 1 over the matrix (all-zero G stays zero)."""
    mean = G.mean()
    return G / mean if mean > 0 else torch.zeros_like(G)


def hessian_vector_products(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                            vectors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """H v for the loss whose `grads` were taken with create_graph=True (double backward)."""
    return torch.autograd.grad(grads, params, grad_outputs=list(vectors))


def exact_regularizer_grads(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                            Gs: Sequence[torch.Tensor], lambda_: float,
                            alpha: float) -> list[torch.Tensor]:
    """Exact gradient of lambda alpha^2 sum G g^2: 2 lambda alpha^2 H (G * g)."""
    vectors = [(G * g.detach().float()).to(g.dtype) for G, g in zip(Gs, grads, strict=True)]
    products = hessian_vector_products(grads, params, vectors)
    return [(2.0 * lambda_ * alpha**2) * hv.float() for hv in products]


def taylor_importance(refined_grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """|-g' w + 1/2 (g' w)^2|: second-order estimate of the loss change when w is set to zero,
    with the Hessian diagonal from the empirical Fisher (g'^2)."""
    gw = refined_grad.float() * weight.float()
    return (-gw + 0.5 * gw.pow(2)).abs()


def scheduled_lr(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up from 0 over `warmup` steps, then linear decay towards 0 at `total`."""
    if step < warmup:
        return lr * step / warmup
    return lr * max(total - step, 0) / max(total - warmup, 1)


def clip_coefficient(norm: float | None, max_norm: float | None) -> float:
    """Factor that scales an update of global norm `norm` down to `max_norm`; 0 while the norm
    is still unknown (the lagged clip's first step)."""
    if max_norm is None:
        return 1.0
    if norm is None:
        return 0.0
    return min(1.0, max_norm / (norm + 1e-6))
