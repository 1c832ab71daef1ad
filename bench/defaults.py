"""conf/ composed the way run.py composes it: for a benchmark's cell (bench.perf.cell) and for the
configured defaults the leaderboard names rows against, so that a row's label says where its
cell departs from what a plain `run.py` would run, whatever other records share the folder."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.paths import CONF_DIR


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """conf/config.yaml with command-line style overrides (`pruner=wanda`, `calib.nsamples=8`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


@cache
def configured_defaults(method: str, domain: str, calib: str) -> dict[str, Any] | None:
    """The resolved default config of `pruner=<method> domain=<domain> calib=<calib>`; None where
    conf/ has no such choice (a method or domain the records know and this checkout does not)."""
    try:
        config = compose_config([f"pruner={method}", f"domain={domain}", f"calib={calib}"])
        return OmegaConf.to_container(config, resolve=True)
    except (HydraException, OmegaConfBaseException):
        return None
