"""One measurement per process: peak resident memory is a per-process high-water mark, so a
benchmark that reports it runs each measurement as `python -m <module> --worker ...`. The
parent calls `run_worker`; the worker ends with `print_result`, whose line is the last of its
stdout (anything printed before it is ignored)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from core.paths import CONF_DIR, PROJECT_ROOT


def default_choice(group: str) -> str:
    """The option conf/config.yaml's defaults list picks for `group` (the default cell's model)."""
    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    return next(entry[group] for entry in defaults if isinstance(entry, dict) and group in entry)


def bench_parser(module: str, doc: str | None, domain: bool = True) -> argparse.ArgumentParser:
    """A benchmark's command line, with the options benchmarks share: `--model` (a conf/model
    entry, the default cell's by default) and `--domain`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n")[0])
    parser.add_argument("--model", default=default_choice("model"), help="a conf/model entry")
    if domain:
        parser.add_argument("--domain", default=default_choice("domain"), help="a conf/domain entry")
    return parser


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
