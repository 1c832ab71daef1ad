"""Where an interrupted domain pass picks up. At large budgets the domain pass is hours long (a
D-Pruner cell at 4,096 windows of 256 tokens is about 2.3 h on a 2-core CPU), longer than a
preemptible job or a working session may last. Every `pruner.resume_minutes` the pass saves what
it has built so far -- the steps taken, the summed importance and regulariser sizes, the weights
along the SGD trajectory and the lagged clip norm -- into `<results.dir>/resume/<cell key>/`;
the next run of the same cell restores it and takes the remaining steps, which gives the same
importance and weights as an uninterrupted pass (the pass has no randomness: dropout is off and
the batches come in a fixed order). The file is removed once the cell's record is written."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.calibration import ExampleWindows
from core.files import atomic_open, remove_stale_partials
from core.memory import peak_memory_mb
from pruners.dpruner.options import DPrunerOptions

if TYPE_CHECKING:  # domain.py imports this module
    from pruners.dpruner.domain import MatrixScore, Trajectory

log = logging.getLogger(__name__)

STATE_FILE = "dpruner_domain.pt"
STATE_VERSION = 1
NOT_COMPUTED = ("resume_minutes", "scratch", "scratch_dir", "cache_dir", "buffers_on_cpu",
                "return_freed_memory")  # where things live and when state is saved, not what is computed


def pass_fingerprint(options: DPrunerOptions, windows: Sequence[torch.Tensor], total: int) -> str:
    """A hash of what the pass computes: its options and the very token ids (and masks) it reads."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in asdict(options).items() if k not in NOT_COMPUTED}
    digest.update(repr(sorted(settings.items(), key=lambda kv: kv[0])).encode())
    digest.update(str(total).encode())
    for tensor in windows:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class DomainPassResume:
    """Saves the pass every `minutes` (and at its end when that is due) and restores it."""

    def __init__(self, folder: Path, minutes: float, fingerprint: str) -> None:
        self.path, self.minutes, self.fingerprint = Path(folder) / STATE_FILE, minutes, fingerprint
        self.started = self.last_save = time.perf_counter()
        self.seconds_before = 0.0  # pass seconds spent by the runs that saved the restored state
        self.peak_mb_before: float | None = None  # their peak memory (MiB)
        self.start_step = 0

    @classmethod
    def for_pass(cls, folder: Path | None, options: DPrunerOptions,
                 ids: torch.Tensor | ExampleWindows) -> DomainPassResume | None:
        """The resume of a pass over `ids` saving into `folder`; None where either is off."""
        if folder is None or options.resume_minutes is None:
            return None
        windows = [ids.ids, ids.lengths] if isinstance(ids, ExampleWindows) else [ids]
        fingerprint = pass_fingerprint(options, windows, options.steps(len(ids)))
        return cls(folder, options.resume_minutes, fingerprint)

    def restore(self, matrices: list[MatrixScore], trajectory: Trajectory) -> int:
        """The steps already taken by an earlier run of this cell (0 when there is none), with
        the matrices' sums, weights and the clip norm put back as that run left them."""
        remove_stale_partials(self.path.parent)
        if not self.path.exists():
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: start over, keep nothing from it
            log.warning("resume state %s unreadable (%s); the domain pass starts over", self.path, err)
            return 0
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != self.fingerprint:
            log.warning("resume state %s belongs to other windows or settings; the domain pass starts over",
                        self.path)
            return 0
        with torch.no_grad():
            for m in matrices:
                m.importance.copy_(state["importance"][m.name])
                m.grad_sum.fill_(float(state["grad_sum"][m.name]))
                m.reg_sum.fill_(float(state["reg_sum"][m.name]))
                if m.name in state["weights"]:
                    m.param.copy_(state["weights"][m.name].to(device=m.param.device, dtype=m.param.dtype))
        trajectory.previous_norm = state["previous_norm"]
        self.start_step, self.seconds_before = int(state["step"]), float(state["seconds"])
        self.peak_mb_before = state["peak_mb"]
        print(f"resume: domain pass at step {self.start_step} of {state['total']} ({self.path})", flush=True)
        return self.start_step

    def after_step(self, done: int, total: int, matrices: list[MatrixScore], trajectory: Trajectory,
                   weights_moved: bool) -> None:
        """Save when `minutes` have passed since the last save (the pass's start counts as one)."""
        now = time.perf_counter()
        if (now - self.last_save) / 60 < self.minutes:
            return
        state: dict[str, Any] = {
            "version": STATE_VERSION, "fingerprint": self.fingerprint, "step": done, "total": total,
            "seconds": self.seconds_before + now - self.started, "peak_mb": self.peak_mb(),
            "previous_norm": trajectory.previous_norm,
            "importance": {m.name: m.importance.detach().cpu() for m in matrices},
            "grad_sum": {m.name: float(m.grad_sum) for m in matrices},
            "reg_sum": {m.name: float(m.reg_sum) for m in matrices},
            "weights": {m.name: m.param.detach().cpu() for m in matrices} if weights_moved else {},
        }
        with atomic_open(self.path, "wb") as handle:
            torch.save(state, handle)
        self.last_save = time.perf_counter()

    def peak_mb(self) -> float:
        """The higher of this process's peak memory and the earlier runs' (MiB)."""
        return max(peak_memory_mb(), self.peak_mb_before or 0.0)

    def report(self) -> dict[str, Any] | None:
        """What the record says about a resumed pass: the step it resumed at and the seconds the
        earlier runs spent (added to the cell's prune seconds); None for a pass in one run."""
        if self.start_step == 0:
            return None
        return {"resumed_at_step": self.start_step, "seconds_before_resume": self.seconds_before,
                "peak_mb_before_resume": self.peak_mb_before}
