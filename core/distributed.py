"""The processes of one cell: who this process is (from the launcher's environment), the process
group, and the few collectives the pruners need. One process (no launcher variables) is the
default, and then every function here is a no-op, so the single-process numbers are untouched.

Launchers: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); a
submitit job (Hydra's submitit launchers with `tasks_per_node=N`, on SLURM or locally) is read
through submitit's own environment helper, which exports the same variables; a plain SLURM step
(`srun python run.py`) gives SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, with MASTER_ADDR and
MASTER_PORT set by the job script."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from core.errors import ConfigError

# (rank, world size, local rank) variables, in the order they are looked for
LAUNCHER_VARIABLES = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
TIMEOUT = timedelta(minutes=30)  # a collective waiting longer than this fails the cell
# how gloo and NCCL word a collective whose peer died (they raise a plain RuntimeError)
PEER_FAILURE = ("closed by peer", "connection reset", "remote worker", "nccl", "timed out", "timeout")


class LauncherStop(RuntimeError):
    """The launcher stopped this process: torchrun terminates the surviving ranks when one fails."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise LauncherStop("the launcher stopped this process (SIGTERM)")


@dataclass(frozen=True)
class World:
    """This process's place among the cell's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0 validates aloud, evaluates, writes the record and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> slice:
        """This rank's contiguous, disjoint share of n items (shares differ by at most one)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)


def export_submitit_environment() -> None:
    """Inside a submitit job, let submitit export the torch variables (RANK, WORLD_SIZE, master
    from the node list) into this process's environment, as torchrun does; elsewhere nothing.
    The one place that writes the environment: the command calls it before reading the world."""
    if "SUBMITIT_EXECUTOR" in os.environ and "RANK" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The launcher's rank, world size and local rank (read, never written); none of them: one
    process."""
    environ = os.environ if environ is None else environ
    for rank_key, size_key, local_key in LAUNCHER_VARIABLES:
        if size_key in environ:
            try:
                world = World(int(environ.get(rank_key, 0)), int(environ[size_key]),
                              int(environ.get(local_key, 0)))
            except ValueError as err:
                raise ConfigError(f"{rank_key}/{size_key}/{local_key} are not integers ({err})") from err
            if not 0 <= world.rank < world.size:
                raise ConfigError(f"{rank_key}={world.rank} is outside a world of {world.size} processes")
            return world
    return World()


def check_shares(requests: Mapping[str, Any], world: World) -> None:
    """Every rank needs at least one window of every calibration set (its share of the sums); a
    set of every example (nsamples None) is as large as its sources."""
    for slot, request in requests.items():
        if request.nsamples is not None and request.nsamples < world.size:
            raise ConfigError(f"{request.nsamples} {slot} calibration windows for {world.size} processes; "
                              "every process needs at least one (raise nsamples)")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def start(world: World, device: torch.device) -> str | None:
    """Join the cell's process group (env:// rendezvous); returns the backend, None alone."""
    if not world.distributed:
        return None
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"{world.size} processes but {key} is not set; launch with torchrun, "
                              "or export MASTER_ADDR and MASTER_PORT in the SLURM job script")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if world.local_rank >= visible:  # NCCL needs a GPU of its own per process
            raise ConfigError(f"process {world.rank} is local rank {world.local_rank} but this node has "
                              f"{visible} visible GPU(s); start at most {visible} processes per node "
                              "(--nproc_per_node / tasks_per_node), or use model.device=cpu (gloo)")
        torch.cuda.set_device(world.local_rank)
    backend = backend_for(device)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    # when a peer dies, torchrun may terminate this rank before its own collective fails
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    return backend


def peer_failed(err: BaseException) -> bool:
    """Whether `err` is a collective that failed because another process died or hung."""
    if isinstance(err, (dist.DistError, LauncherStop)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and dist.is_initialized() and any(m in text for m in PEER_FAILURE)


def peer_failure(err: BaseException, world: World, key: str | None) -> str | None:
    """The one line for a cell whose other process died (None when `err` is something else)."""
    if not peer_failed(err):
        return None
    why = str(err).splitlines()[0].split(". ")[0][-100:]
    return f"another of the {world.size} processes of cell {key} failed or vanished ({why}); nothing recorded"


def quiet() -> None:
    """Ranks other than 0 print nothing of their own (rank 0 speaks for the cell)."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> World:
    """The running world (one process unless a process group is up)."""
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the processes, in place."""
    if current().distributed:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_float(value: float) -> float:
    """Sum of a Python number over the processes (fp64)."""
    if not current().distributed:
        return value
    return float(all_reduce_(torch.tensor(value, dtype=torch.float64, device=_comm_device())))


def all_agree(flag: bool) -> bool:
    """True only when every process says so (a cache hit everywhere, not just here)."""
    return all_reduce_float(0.0 if flag else 1.0) == 0.0


def barrier() -> None:
    """Wait for every process (none alone)."""
    if current().distributed:
        dist.barrier()


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s values everywhere, in place."""
    if current().distributed:
        dist.broadcast(tensor, src)
    return tensor


def local_rows(full: torch.Tensor, world: World | None = None) -> torch.Tensor:
    """This rank's rows of a matrix as FSDP's dim-0 sharding cuts it (torch.chunk: ceil(rows/N)
    rows per rank, the last ranks possibly fewer or none)."""
    world = world or current()
    chunk = -(-full.shape[0] // world.size)
    return full[world.rank * chunk : (world.rank + 1) * chunk]


class OwnRows(Mapping[str, torch.Tensor]):
    """This rank's rows of each matrix of `full`, cut when asked for (a file is read one matrix
    at a time)."""

    def __init__(self, full: Mapping[str, torch.Tensor]) -> None:
        self.full = full

    def __getitem__(self, name: str) -> torch.Tensor:
        return local_rows(self.full[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.full)

    def __len__(self) -> int:
        return len(self.full)


def gather_rows(local: torch.Tensor, rows: int) -> torch.Tensor:
    """The full matrix from every rank's `local_rows` (padded to equal size for the collective)."""
    world = current()
    if not world.distributed:
        return local
    chunk = -(-rows // world.size)
    padded = local.new_zeros((chunk, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:rows]


def _comm_device() -> torch.device:
    """Where a scalar for a collective lives: NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
