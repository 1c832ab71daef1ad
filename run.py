"""One prune -> evaluate cell (or a Hydra multirun grid of them).

    python run.py                                    # D-Pruner, legal, 50 % (the default cell)
    python run.py pruner=wanda domain=healthcare
    python run.py -m pruner=magnitude,wanda,sparsegpt domain=healthcare,legal sparsity=0.5

Order of work: validate everything cheap (bench/cell.py: config values, every data file read,
the model's config, the results folder) -> skip the cell if its record exists -> load the model
-> calibrate -> prune -> evaluate -> write the record atomically -> log to W&B. Each step is one
call into the package that owns it. Under `torchrun --nproc_per_node=N` (core/distributed.py)
every process validates, loads and prunes (the pruners split the work); rank 0 alone prints,
evaluates, writes the record and logs; a process that dies fails the cell on rank 0, one line."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType


def _interrupted_early(signum: int, frame: object) -> None:
    """Ctrl-C before the cell's work starts (startup, heavy imports): nothing is written yet, so the
    process ends here, whatever library code it interrupts (os._exit: no handler can catch it)."""
    sys.stderr.write("interrupted: nothing recorded\n")
    sys.stderr.flush()
    os._exit(130)


def _resend_interrupt_soon() -> None:
    """Deliver Ctrl-C again a moment later, from a helper thread (Python runs the handler on the
    main thread at its next step, which is almost surely outside the finalizer that was running)."""
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
    timer.daemon = True  # a run that ends first is not held back
    timer.start()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C during the cell is KeyboardInterrupt -- except inside a finalizer (`__del__`), where
    Python would swallow it (printing "Exception ignored") and the run would go on: there it is
    re-sent a moment later instead of lost."""
    while frame is not None:
        if frame.f_code.co_name in ("__del__", _interrupt_swallowed.__name__):
            _resend_interrupt_soon()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def _interrupt_swallowed(unraisable: sys.UnraisableHookArgs) -> None:
    """The backstop for other places Python swallows exceptions (weakref callbacks, gc hooks): a
    Ctrl-C ignored there is re-sent, not printed and lost; everything else is reported as usual."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _resend_interrupt_soon()
    else:
        sys.__unraisablehook__(unraisable)


def catch_interrupts() -> None:
    """From here on Ctrl-C is KeyboardInterrupt again, and never lost in a finalizer."""
    signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = _interrupt_swallowed


if __name__ == "__main__":  # the command's own work, not an import's: a quiet Ctrl-C until the
    signal.signal(signal.SIGINT, _interrupted_early)  # heavy imports below are done

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from core.paths import CONF_DIR  # noqa: E402

CONFIG_GROUPS = ("model", "pruner", "domain", "calib", "eval", "logger", "experiment", "dpruner_variant")


def check_group_choices(argv: list[str]) -> None:
    """Name an unknown config-group choice in one line (before Hydra's longer message)."""
    for arg in argv[1:]:
        name, _, value = arg.lstrip("+~").partition("=")
        if name not in CONFIG_GROUPS or not value:
            continue
        known = sorted(p.stem for p in (CONF_DIR / name).glob("*.yaml"))
        for option in value.split(","):
            if option and option not in known:
                message = f"error: unknown {name} {option!r}; choose one of: {', '.join(known)}"
                if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":  # not once per rank
                    print(message, file=sys.stderr)
                sys.exit(2)


if __name__ == "__main__":
    check_group_choices(sys.argv)  # the cheap argument check, before the heavy imports

import hydra  # noqa: E402  (after the cheap argument check)
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import CompactHydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bench.cell import ValidatedCell, validate  # noqa: E402
from bench.results.mask_files import save_masks  # noqa: E402
from bench.results.records import (  # noqa: E402
    done_lines,
    finished,
    git_revision,
    new_record,
    record_path,
    save_record,
    set_aside_unfinished,
)
from bench.results.tracking import log_record  # noqa: E402
from bench.schema import composition_error  # noqa: E402
from core import distributed as processes  # noqa: E402  (a global `distributed` breaks submitit's pickle)
from core.errors import ConfigError, print_own_lines  # noqa: E402
from core.files import remove_stale_partials  # noqa: E402
from core.memory import peak_memory_mb  # noqa: E402
from core.models import load_model, place_for_evaluation, resolve_device, save_model  # noqa: E402
from core.structure import sparsity_summary  # noqa: E402
from evals.suite import evaluate  # noqa: E402


def run_cell(cfg: DictConfig, cell: ValidatedCell, world: processes.World) -> Path | None:
    """The cell's work after validation; rank 0 alone evaluates, records and logs."""
    if world.leader:
        for folder in (cell.results_dir, cell.results_dir / "masks", cell.results_dir.parent / "models"):
            remove_stale_partials(folder)  # what killed runs left
        set_aside_unfinished(cell.results_dir, cell.key)  # the leader alone renames, before any rank asks
    device = resolve_device(cfg.model.device)
    backend = processes.start(world, device)
    if processes.all_agree(finished(cell.results_dir, cell.key)) and not cfg.force:
        print(f"skip: cell {cell.key} already done ({cell.results_dir / (cell.key + '.json')}); "
              "force=true re-runs it")
        return None

    torch.manual_seed(int(cfg.seed))
    print(f"load: model {cfg.model.name} on {device}", flush=True)
    model, tokenizer = load_model(cfg.model)
    calibration = cell.calibration(tokenizer)
    cell.pruner.resume_folder = cell.resume_folder  # an interrupted long pass picks up there
    start = time.perf_counter()
    reports = cell.pruner.prune(model, calibration, device)
    earlier = cell.pruner.resumed or {}  # what runs of this cell that were interrupted spent
    prune_seconds = time.perf_counter() - start + earlier.get("seconds_before_resume", 0.0)
    model = place_for_evaluation(model, cfg.model, device)  # after rank-local loading
    if not world.leader:
        return None  # rank 0 evaluates the pruned model (every rank holds the same one)
    evaluation = evaluate(model, tokenizer, cfg.eval, cfg.domain, cfg.data.general, cell.data_root,
                          progress=bool(cfg.driver.progress))
    cell.check_inputs()  # the data files still hold the bytes scored and keyed, or nothing is recorded

    record = new_record(
        cell.key, cell.config, pruner=cell.pruner.name, choices=cell.pruner.describe(),
        calib_source=cell.pruner.calibration_source(cell.requests),
        evaluation=evaluation, sparsity=sparsity_summary(model), prune_seconds=prune_seconds,
        prune_stages=cell.pruner.stages, matrices=[r.as_dict() for r in reports],
        memory={"peak_rss_mb": max(peak_memory_mb(), earlier.get("peak_mb_before_resume") or 0.0),
                "peak_cuda_mb": peak_memory_mb(device) if device.type == "cuda" else None},
        world={"size": world.size, "backend": backend}, layers=cell.pruner.layers.report(),
        budget=cell.pruner.budget(cell.requests, calibration))
    if cfg.save_masks:
        save_masks(model, cell.results_dir / "masks" / f"{cell.key}.npz")
        record["masks"] = f"masks/{cell.key}.npz"  # relative to the record's folder
    if cfg.save_model:
        folder = cell.results_dir.parent / "models" / cell.key
        record["saved_model"] = str(save_model(model, tokenizer, folder))
    path = save_record(cell.results_dir, record)
    cell.discard_resume_state()
    log_record(record, cfg.logger)
    print("\n".join(done_lines(record, path)))
    return path


def written(cell: ValidatedCell) -> tuple[int, int] | None:
    """Which write of the cell's record is on disk (inode, time), None before the first."""
    path = record_path(cell.results_dir, cell.key)
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None


def reporting_composition_errors(hydra_main: Callable[[], None]) -> Callable[[], None]:
    """`hydra_main`, with Hydra's own composition errors (a misspelt key, a list without -m) as one
    `error:` line with its advice and exit 2, where Hydra alone prints several and exits 1."""

    def run() -> None:
        if os.environ.get("HYDRA_FULL_ERROR"):
            return hydra_main()  # the user asked for Hydra's complete stack trace
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises its errors instead of printing them
        try:
            hydra_main()
        except CompactHydraException as err:
            print(f"error: {composition_error(err)}", file=sys.stderr)
            sys.exit(2)

    return run


@reporting_composition_errors
@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    key, world = None, processes.World()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    git_revision()  # the code this process runs, fixed before any cell (a grid's later ones too)
    try:
        processes.export_submitit_environment()
        world = processes.world_from_env()
        if not world.leader:
            processes.quiet()
            cfg.driver.progress = False
        cell = validate(cfg, world)
        key, before = cell.key, written(cell)
        run_cell(cfg, cell, world)
    except ConfigError as err:
        if world.leader:
            print(f"error: {err}", file=sys.stderr)
        if multirun:
            raise  # the grid sweeper lists the failed cell; the grid's other cells still run
        sys.exit(2)
    except RuntimeError as err:
        message = processes.peer_failure(err, world, key)
        if message is None:
            raise
        if world.leader:
            print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if multirun:
            raise  # the grid's own `interrupted:` line speaks for the cell
        if key is not None and written(cell) != before:  # the cell was done; W&B or the summary was not
            print_own_lines(f"interrupted: cell {key} recorded ({record_path(cell.results_dir, key)})")
        else:
            print_own_lines(f"interrupted: nothing recorded for cell {key or '(not yet validated)'}")
        sys.exit(130)
    finally:
        processes.stop()


if __name__ == "__main__":
    catch_interrupts()
    try:
        main()
    except KeyboardInterrupt:  # while Hydra composes, before main's own handler is in place
        print("interrupted: nothing recorded", file=sys.stderr)
        sys.exit(130)
    finally:  # the work is over: Python's shutdown restores the default Ctrl-C action, which would
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # kill the exit with a signal instead of its code
