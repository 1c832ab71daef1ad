"""W&B logging of a finished record. Runs after the record is on disk, so a W&B failure
costs the log, never the result. Without credentials it logs offline (never a login prompt)."""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError

MODES = ("auto", "online", "offline", "disabled")


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"logger.mode={mode!r}; choose one of {MODES}")
    if mode == "auto":
        return "online" if has_credentials() else "offline"
    return mode


def log_record(record: Mapping[str, Any], logger_cfg: Mapping[str, Any], project_root: Path) -> str | None:
    """Log one cell as one W&B run; returns the run folder (or None when nothing was logged)."""
    if logger_cfg.get("name") != "wandb":
        return None
    mode = resolve_mode(str(logger_cfg.get("mode", "auto")))
    if mode == "disabled":
        return None
    try:
        import wandb

        folder = Path(str(logger_cfg.get("dir", "results/wandb")))
        folder = folder if folder.is_absolute() else project_root / folder
        folder.mkdir(parents=True, exist_ok=True)
        cell = record["cell"]
        run = wandb.init(
            project=logger_cfg.get("project", "dpruner-bench"), entity=logger_cfg.get("entity"),
            group=logger_cfg.get("group"), mode=mode, dir=str(folder), config=record["config"],
            name=f"{cell['pruner']}-{cell['domain']}-{cell['sparsity']}-{cell['pattern']}-{record['key'][:6]}",
            job_type="cell", reinit="finish_previous", settings=wandb.Settings(silent=True),
        )
        summary = dict(record["metrics"])
        summary.update({
            "sparsity/achieved": record["sparsity"]["achieved"],
            "sparsity/model": record["sparsity"]["model"],
            "time/prune_s": record["prune"]["seconds"], "time/eval_s": record["eval"]["seconds"],
            "memory/peak_rss_mb": record["memory"]["peak_rss_mb"],
        })
        run.log(summary)
        matrices = record["prune"]["matrices"]
        columns = ["name", "sparsity", "error", "seconds", "peak_mem_mb"]
        run.log({"per_matrix": wandb.Table(columns=columns,
                                           data=[[m.get(c) for c in columns] for m in matrices])})
        for task, rows in record.get("samples", {}).items():
            if rows:
                keys = list(rows[0])
                table = wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in rows])
                run.log({f"samples/{task}": table})
        run.summary.update(summary)
        path = run.dir
        run.finish()
        return path
    except Exception as err:  # noqa: BLE001 - the record is safe on disk; logging is best effort
        print(f"warning: W&B logging failed ({type(err).__name__}: {err}); the record is saved")
        return None
