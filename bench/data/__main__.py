"""Fetch or check the benchmark data.

    python -m bench.data fetch [--mirror URL] [--dest DIR] [--only NAME ...]
    python -m bench.data verify [--root DIR]

`fetch` writes to the cache tree (<cache>/data; the cache is $DPB_CACHE_DIR, else
~/.cache/dpruner-bench), which `data.root` falls back to when ../shared/data is absent. `verify`
checks a tree (by default the one the suite would use) against bench/data/manifest.json.
Failures are one `error:` line and a non-zero exit (docs/fetch.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.data.fetch import fetch
from bench.data.manifest import datasets, load_manifest, select
from core.data import DATA_ROOT_ENV, fetched_data_root, resolve_data_root
from core.errors import ConfigError
from core.paths import project_path


def verify(root: Path) -> int:
    """One line per file that is missing or differs; the number of such files."""
    bad = 0
    for entry in load_manifest():
        problem = entry.mismatch(root / entry.path)
        if problem == "missing" and entry.url is None:
            print(f"note: {entry.path} is absent (no pinned public source; fetched only with --mirror)")
        elif problem is not None:
            print(f"{entry.path}: {problem}")
            bad += 1
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    entries = load_manifest()
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="download, check and lay out the data files")
    get.add_argument("--mirror", metavar="URL",
                     help="take every file from URL/<path> (a copy of a data tree) instead")
    get.add_argument("--dest", type=Path, metavar="DIR", help=f"write here instead of {fetched_data_root()}")
    get.add_argument("--only", nargs="+", metavar="NAME",
                     help=f"these datasets: {', '.join(datasets(entries))}")
    check = commands.add_parser("verify", help="check a data tree against the manifest")
    check.add_argument("--root", metavar="DIR",
                       help=f"the tree to check (default: the one the suite uses: ${DATA_ROOT_ENV}, "
                            f"../shared/data, {fetched_data_root()})")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            dest = project_path(args.dest) if args.dest else fetched_data_root()
            fetch(select(entries, args.only), dest, args.mirror)
            hint = "" if dest == fetched_data_root() else f"; use it with data.root={dest}"
            print(f"data tree {dest} is ready for {', '.join(args.only or ['every dataset'])}{hint}")
            return 0
        root = resolve_data_root(args.root)
        bad = verify(root)
        print(f"{root}: {bad} file(s) differ from the manifest" if bad else f"{root}: every file matches")
        return 1 if bad else 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
