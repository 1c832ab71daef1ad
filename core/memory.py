"""Peak memory readings and the allocator setting that keeps D-Pruner's CPU footprint honest."""

from __future__ import annotations

import ctypes
import resource
import sys

import torch

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak resident memory of this process (CPU) or peak allocated memory (CUDA), in MiB."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def free_large_blocks_at_once(threshold_bytes: int = 1 << 18) -> bool:
    """Serve CPU allocations of at least `threshold_bytes` by mmap, so that freeing one gives
    its memory back to the system at once. glibc otherwise raises that threshold after the first
    large free and recycles later large blocks from a heap that fragments: a stream of freshly
    allocated and freed per-matrix tensors (D-Pruner's gradients) then keeps hundreds of MiB
    resident that nothing uses. Returns whether the setting took (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
