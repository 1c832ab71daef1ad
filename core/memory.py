"""Peak memory readings and the allocator setting that trades D-Pruner's CPU time for memory."""

from __future__ import annotations

import ctypes
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20  # the highest mmap threshold glibc's own adjustment reaches (64-bit)


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak resident memory of this process (CPU) or peak allocated memory (CUDA), in MiB."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def release_device_memory(device: torch.device) -> None:
    """Hand the accelerator's cached blocks back to the driver (for another process to use)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def large_blocks_returned_at_once(enabled: bool = True, threshold_bytes: int = 1 << 18) -> Iterator[None]:
    """While inside, serve CPU allocations of at least `threshold_bytes` by mmap, so that freeing
    one gives its memory back to the system at once. glibc otherwise recycles large blocks from a
    heap that fragments: a stream of per-matrix gradients and activations then keeps a few hundred
    MiB resident that nothing uses. The price is time: every such allocation is fresh pages from
    the kernel (D-Pruner's domain pass on the default model runs ~2x slower). On leaving, large
    blocks are recycled again (glibc's thresholds once its own adjustment has peaked), so what
    follows (evaluation) runs at full speed. A no-op off glibc or when not `enabled`."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes))
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
