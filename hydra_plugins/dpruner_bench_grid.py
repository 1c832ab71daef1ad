"""A Hydra sweeper for grids that are not one cartesian product (the leaderboard: 2:4 only at
50% sparsity, mixed calibration only for Wanda and SparseGPT, one dense cell per domain).

`hydra.sweeper.grids` is a list of sub-grids, each written like `hydra.sweeper.params`
(key -> comma-separated values); the sweep runs their union, each job once. `params` and the
command line apply to every sub-grid and replace a sub-grid's own value of the same key, so
`python run.py -m +experiment=leaderboard domain=legal` narrows the preset. Hydra only loads
sweepers from the `hydra_plugins` namespace, hence this module's place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override


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


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: Mapping[str, str] | None = None,
                 grids: Sequence[Mapping[str, str]] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=dict(params or {}))
        self.grids = [{str(k): str(v) for k, v in grid.items()} for grid in grids or []]

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        """BasicSweeper.sweep calls this on `self`: one union instead of one product."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = union_of_grids(parser, self.grids, overrides)
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))
