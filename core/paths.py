"""Where the project lives: the one place that knows the project root."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


def project_path(path: str | os.PathLike) -> Path:
    """A user-given path with `~` expanded; relative paths are taken from the project root (not
    the working directory), so a grid launched from anywhere writes to the same place."""
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else PROJECT_ROOT / path
