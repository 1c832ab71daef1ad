"""Download the data tree the manifest describes, check every file's size and SHA-256, and lay it
out under a root as the suite expects (by default the cache tree `data.root` falls back to).

Each file is staged in a scratch folder inside the destination and renamed into place only after
it matched the manifest, so a killed or failed fetch never leaves a half or wrong file; files
already present and matching are kept, so a fetch can be rerun to finish an interrupted one."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from bench.data.convert import RECIPES
from bench.data.manifest import Entry
from core.data import FETCH_COMMAND
from core.errors import ConfigError
from core.files import CHUNK, scratch_folder

TIMEOUT_S = 60


def fetch(entries: Sequence[Entry], dest: Path, mirror: str | None = None,
          progress: bool | None = None) -> None:
    """Every entry under `dest`, each checked against the manifest; the first file that cannot be
    had is one ConfigError naming its dataset and the command that retries it. `mirror` replaces
    each source by MIRROR/<path> (a copy of a data tree served over http(s) or file://);
    `progress=None` shows the bars only on a terminal."""
    with scratch_folder(dest, "fetch") as scratch:
        for entry in entries:
            target = dest / entry.path
            if entry.mismatch(target) is None:
                print(f"present  {entry.path}")
                continue
            url = mirror_url(mirror, entry.path) if mirror else entry.url
            if url is None:
                print(f"note: {entry.path} has no pinned public source; it is fetched only with --mirror "
                      f"({entry.license}, see bench/data/manifest.json)")
                continue
            staged = scratch / Path(entry.path).name
            _make(entry, url, staged, converted=bool(entry.convert) and not mirror, progress=progress)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            print(f"fetched  {entry.path} ({entry.size} bytes, SHA-256 matches)")


def mirror_url(mirror: str, path: str) -> str:
    return f"{mirror.rstrip('/')}/{urllib.parse.quote(path)}"


def _make(entry: Entry, url: str, staged: Path, converted: bool, progress: bool | None) -> None:
    """The entry's file at `staged`, downloaded (and converted where the manifest says so), checked."""
    if converted:
        source = staged.with_name(staged.name + ".source")
        download(entry, url, source, progress)
        try:
            RECIPES[entry.convert["recipe"]](source, staged, entry.convert)
        except (OSError, ValueError, KeyError, SyntaxError, zipfile.BadZipFile) as err:
            why = " ".join(str(err).split())[:160]
            raise ConfigError(f"{entry.path} (dataset {entry.dataset!r}): {url} could not be converted "
                              f"({type(err).__name__}: {why})") from None
        finally:
            source.unlink(missing_ok=True)
    else:
        download(entry, url, staged, progress)
    problem = entry.mismatch(staged)
    if problem is not None:
        staged.unlink()
        made = "converted from" if converted else "downloaded from"
        advice = (" (the conversion is checked only against the shipped copy; fetch this file from a copy "
                  "of the data with --mirror URL)" if converted else "")
        raise ConfigError(f"{entry.path} (dataset {entry.dataset!r}) {made} {url} does not match the "
                          f"manifest: {problem}; nothing written{advice}")


def download(entry: Entry, url: str, path: Path, progress: bool | None = None) -> None:
    """`url` to `path`; a network failure is one ConfigError naming the dataset and the retry."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.path, leave=False,
                      disable=None if progress is None else not progress) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:  # URLError, HTTPError, timeouts, refused or reset connections
        reason = err if isinstance(err, urllib.error.HTTPError) else getattr(err, "reason", err)
        raise ConfigError(f"cannot download {entry.path} (dataset {entry.dataset!r}) from {url} ({reason}); "
                          f"when the source is reachable (or with --mirror URL), run: "
                          f"{FETCH_COMMAND} --only {entry.dataset}") from None
