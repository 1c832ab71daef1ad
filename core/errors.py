"""One exception type for every user mistake, so `run.py` can print it as a single line, and the
lines a stopped run prints."""

import sys


class ConfigError(ValueError):
    """Bad user input: the message names the bad value and what is allowed."""


def print_own_lines(*lines: str) -> None:
    """`lines` on stderr, the first on a line of its own even where a progress bar was drawing
    (an open bar leaves the cursor at the end of its line): the `interrupted:` lines of a stopped run."""
    from tqdm import tqdm  # imported by then: every stage draws its progress with it

    drawing = len(getattr(tqdm, "_instances", ())) > 0
    print(("\n" if drawing else "") + "\n".join(lines), file=sys.stderr, flush=True)
