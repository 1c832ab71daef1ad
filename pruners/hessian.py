"""The layer-wise OBS Hessian H = 2XX^T/n and its damped inverse, shared by SparseGPT and
D-Pruner's general importance.

Dead inputs (diag H = 0) get diag 1 (their weights are zeroed by the caller). Dampening adds
`percdamp * mean(diag H)` to the diagonal; when a Cholesky factorization fails it is retried with
10x the dampening, up to `max_tries` times, and the dampening used is reported."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


class Hessian:
    """H = 2 X X^T / n over calibration tokens, accumulated batch by batch (a driver statistic)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.sums = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sums.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def matrix(self) -> torch.Tensor:
        return self.sums * (2.0 / max(self.tokens, 1))


@dataclass
class DampedInverse:
    upper: torch.Tensor  # upper Cholesky factor U of H^-1 (H^-1 = U^T U)
    inverse_diag: torch.Tensor  # diag(H^-1)
    dead: torch.Tensor  # bool mask of dead input columns
    percdamp: float  # dampening finally used
    retries: int


@contextmanager
def exact_matmul():
    """TF32 off while the OBS step runs: its updates are sensitive to rounding."""
    cuda = torch.backends.cuda.matmul
    saved = (cuda.allow_tf32, torch.backends.cudnn.allow_tf32)
    cuda.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    try:
        yield
    finally:
        cuda.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def damped_inverse(hessian: torch.Tensor, percdamp: float = 0.01, max_tries: int = 6) -> DampedInverse:
    """Cholesky-based inverse of the damped Hessian, escalating the dampening on failure."""
    H = hessian.double()  # a copy; float64 keeps near-singular Hessians factorizable
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    mean_diag = torch.diagonal(H).mean()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = percdamp
    for attempt in range(max_tries):
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if info.item() == 0:
            inverse = torch.cholesky_inverse(L)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info.item() == 0:
                return DampedInverse(upper.float(), torch.diagonal(inverse).float(), dead, damp, attempt)
        damp *= 10.0
    raise RuntimeError(f"Hessian not positive definite even with dampening {damp / 10:g}")
