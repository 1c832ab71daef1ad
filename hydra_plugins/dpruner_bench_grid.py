"""The sweeper of every grid (conf/hydra/sweeper/grid.yaml): Hydra's basic sweeper, with two
differences.

Grids that are not one cartesian product (the leaderboard: 2:4 only at 50% sparsity, mixed
calibration only for Wanda and SparseGPT, one dense cell per domain): `hydra.sweeper.grids` is a
list of sub-grids, each written like `hydra.sweeper.params` (key -> comma-separated values); the
sweep runs their union, each job once. `params` and the command line apply to every sub-grid and
replace a sub-grid's own value of the same key, so `python run.py -m +experiment=leaderboard
domain=legal` narrows the preset. Without `grids` it is the basic sweeper's product.

A failed cell neither stops the grid nor ends it in a traceback: every cell runs, then one
`failed: <overrides> — <reason>` line per failed cell and `grid: N cells, K failed`, exit 1.
Ctrl-C stops the grid with `interrupted: grid stopped after n of N cells`, exit 130.

Hydra only loads sweepers from the `hydra_plugins` namespace, hence this module's place."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from core.errors import ConfigError, print_own_lines


def union_of_grids(parser: OverridesParser, grids: Sequence[Mapping[str, str]],
                   overrides: Sequence[Override]) -> list[list[str]]:
    """Every job of every sub-grid (with `overrides` applied on top), first occurrence kept."""
    jobs: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for grid in grids or [{}]:
        own = parser.parse_overrides([f"{key}={value}" for key, value in grid.items()])
        # BasicSweeper keeps the last value given for a key: the shared overrides win.
        (batch,) = BasicSweeper.split_arguments([*own, *overrides], None)
        for job in batch:
            if frozenset(job) not in seen:
                seen.add(frozenset(job))
                jobs.append(job)
    return jobs


def keep_traceback(job: JobReturn, error: BaseException) -> Path | None:
    """Write the error's traceback to the job's output folder: a bug needs more than one line,
    and the grid's summary has only one per cell."""
    if job.hydra_cfg is None:
        return None
    path = Path(job.hydra_cfg.hydra.runtime.output_dir) / "traceback.txt"
    path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    return path


def failure_reason(job: JobReturn) -> str:
    """The first line of the job's error: a ConfigError's message as it is (it names the bad
    value and what is allowed); any other error with its type and where its traceback is kept."""
    error = job._return_value  # the public `return_value` re-raises it, with a line of its own
    first = next(iter(str(error).strip().splitlines()), "")
    if isinstance(error, ConfigError):
        return first
    kept = keep_traceback(job, error)
    return f"{type(error).__name__}: {first}".removesuffix(": ") + (f" (traceback: {kept})" if kept else "")


def failure_lines(returns: Sequence[JobReturn], jobs: Sequence[Sequence[str]]) -> list[str]:
    """One `failed:` line per failed job, naming it by the overrides that set it apart from the
    grid's other cells (all of them in a one-cell grid)."""
    shared = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
    return [f"failed: {' '.join(o for o in r.overrides or () if o not in shared)} — {failure_reason(r)}"
            for r in returns if r.status == JobStatus.FAILED]


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: Mapping[str, str] | None = None,
                 grids: Sequence[Mapping[str, str]] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=dict(params or {}))
        self.grids = [{str(k): str(v) for k, v in grid.items()} for grid in grids or []]

    def jobs(self, arguments: Sequence[str]) -> list[list[str]]:
        """The grid's cells: the union of the sub-grids, `params` and `arguments` on top."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        return union_of_grids(parser, self.grids, parser.parse_overrides([*self._parse_config(), *arguments]))

    def batches(self, jobs: list[list[str]]) -> Iterator[tuple[int, list[list[str]]]]:
        """(index of the first job, jobs) per launch: `max_batch_size` at a time, or all at once;
        one at a time for the in-process launcher, which runs them one after another anyway, so
        that Ctrl-C can say how many finished."""
        size = self.max_batch_size or (1 if isinstance(self.launcher, BasicLauncher) else None)
        start = 0
        for batch in self.split_overrides_to_chunks(jobs, size):
            yield start, batch
            start += len(batch)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run every cell, then report the failed ones and exit 1 if there are any (see above)."""
        assert self.config is not None and self.launcher is not None
        jobs = self.jobs(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[JobReturn] = []
        try:
            self.validate_batch_is_legal(jobs)  # every cell composes, before the first runs
            for start, batch in self.batches(jobs):
                returns += self.launcher.launch(batch, initial_job_idx=start)
        except KeyboardInterrupt:
            stopped = f"interrupted: grid stopped after {len(returns)} of {len(jobs)} cells"
            print_own_lines(*failure_lines(returns, jobs), stopped)
            sys.exit(130)
        failed = failure_lines(returns, jobs)
        summary = f"grid: {len(jobs)} cells, {len(failed)} failed"
        if failed:
            print("\n".join([*failed, summary]), file=sys.stderr, flush=True)
            sys.exit(1)
        print(summary, flush=True)
        return [returns]
