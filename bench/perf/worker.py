"""One measurement per process: peak resident memory is a per-process high-water mark, so a
benchmark that reports it runs each measurement as `python -m <module> --worker ...`. The
parent calls `run_worker`; the worker ends with `print_result`, whose line is the last of its
stdout (anything printed before it is ignored)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from core.paths import PROJECT_ROOT


def run_worker(module: str, args: Sequence[str]) -> dict[str, Any]:
    """Run `python -m <module> --worker <args>` from the project root and return its result;
    a failed worker stops the benchmark with the tail of its stderr."""
    command = [sys.executable, "-m", module, "--worker", *args]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{shlex.join(command[1:])} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def print_result(result: Mapping[str, Any]) -> None:
    """The worker's answer to `run_worker`: one JSON line on stdout."""
    print(json.dumps(result), flush=True)
