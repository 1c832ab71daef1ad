"""All W&B logging: one run per finished cell record, and one run for the leaderboard. Logging
happens after the files are on disk, so a W&B failure costs the log, never a result. Without
credentials it logs offline (never a login prompt)."""

from __future__ import annotations

import csv
import io
import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.paths import project_path

MODES = ("auto", "online", "offline", "disabled")
PER_MATRIX = ("name", "sparsity", "error", "seconds", "peak_mem_mb")


def has_credentials() -> bool:
    """An API key in the environment or ~/.netrc: only then may `auto` go online."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """`auto` becomes online with credentials and offline without; other modes are checked."""
    if mode not in MODES:
        raise ConfigError(f"logger.mode={mode!r}; choose one of {MODES}")
    if mode == "auto":
        return "online" if has_credentials() else "offline"
    return mode


def _start(folder: Path, **init: Any) -> Any:
    """A fresh, silent W&B run writing under `folder`."""
    import wandb

    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(dir=str(folder), reinit="finish_previous", settings=wandb.Settings(silent=True), **init)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    import wandb

    return wandb.Table(columns=list(columns), data=[list(row) for row in rows])


def per_matrix_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """One row per pruned matrix. Its sparsity comes from the record's summary
    (`sparsity.per_matrix`); version-1 records kept it in the matrix report instead."""
    achieved = record.get("sparsity", {}).get("per_matrix") or {}
    rows = []
    for report in record["prune"]["matrices"]:
        values = {**report, "sparsity": achieved.get(report["name"], report.get("sparsity"))}
        rows.append([values.get(column) for column in PER_MATRIX])
    return rows


def log_record(record: Mapping[str, Any], logger_cfg: Mapping[str, Any]) -> str | None:
    """Log one cell as one W&B run; returns the run folder (None when nothing was logged)."""
    if logger_cfg.get("name") != "wandb":
        return None
    mode = resolve_mode(str(logger_cfg.get("mode", "auto")))
    if mode == "disabled":
        return None
    try:
        cell = record["cell"]
        run = _start(project_path(str(logger_cfg.get("dir", "results/wandb"))),
                     project=logger_cfg.get("project", "dpruner-bench"), entity=logger_cfg.get("entity"),
                     group=logger_cfg.get("group"), mode=mode, config=record["config"], job_type="cell",
                     name=f"{cell['pruner']}-{cell['domain']}-{cell['sparsity']}-{cell['pattern']}-"
                          f"{record['key'][:6]}")
        summary = dict(record["metrics"])
        for name, (low, high) in record.get("metrics_ci", {}).items():  # the 95 % interval's ends
            summary.update({f"{name}_ci_low": low, f"{name}_ci_high": high})
        summary.update({
            "sparsity/achieved": record["sparsity"]["achieved"],
            "sparsity/model": record["sparsity"]["model"],
            "time/prune_s": record["prune"]["seconds"], "time/eval_s": record["eval"]["seconds"],
            "memory/peak_rss_mb": record["memory"]["peak_rss_mb"],
        })
        run.log(summary)
        run.log({"per_matrix": _table(PER_MATRIX, per_matrix_rows(record))})
        for task, rows in record.get("samples", {}).items():
            if rows:
                keys = list(rows[0])
                run.log({f"samples/{task}": _table(keys, [[r.get(k) for k in keys] for r in rows])})
        run.summary.update(summary)
        path = run.dir
        run.finish()
        return path
    except Exception as err:  # noqa: BLE001 - the record is safe on disk; logging is best effort
        print(f"warning: W&B logging failed ({type(err).__name__}: {err}); the record is saved")
        return None


def log_leaderboard(tables: Mapping[str, str], images: Sequence[Path], mode: str, folder: Path,
                    project: str, group: str | None) -> None:
    """The leaderboard's CSV tables ({domain: CSV text}) as W&B tables and its plots as images,
    in one run under `folder` (taken as given, like the leaderboard's other paths); a failure is
    a warning."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return
    try:
        import wandb

        run = _start(folder, project=project, group=group, job_type="leaderboard",
                     name="leaderboard", mode=mode)
        for domain, text in tables.items():
            header, *rows = list(csv.reader(io.StringIO(text)))
            run.log({f"leaderboard/{domain}": _table(header, [[_number(v) for v in row] for row in rows])})
        run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in images})
        print(f"W&B ({mode}): {run.dir}")
        run.finish()
    except Exception as err:  # noqa: BLE001 - the files are written; logging is best effort
        print(f"warning: W&B logging failed ({type(err).__name__}: {err}); the files are written",
              file=sys.stderr)


def _number(text: str) -> Any:
    """A CSV cell back as a number, None when empty, else the text."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text
