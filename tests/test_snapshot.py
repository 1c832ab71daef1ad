"""The record key hashes the bytes the cell scores: each data file is read from disk once per cell,
calibration and evaluation get those same bytes, and a file that changes while the cell runs
fails the cell before anything is recorded (core/snapshot.py)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.cell import ValidatedCell, validate
from bench.defaults import compose_config
from core import snapshot
from core.data import load_texts, resolve_data_root
from core.errors import ConfigError
from evals.lm_tasks import task_sources
from evals.perplexity import perplexity_sources
from evals.tasks.declarations import read_task

ROOT = Path(__file__).resolve().parent.parent
DATA = resolve_data_root(None)
TINY = ["model=tiny-llama", "eval=smoke", "logger=none", "driver.progress=false"]
WIKITEXT = "general/wikitext2_test.raw"


class ByteTokenizer:
    """Token ids are a text's bytes: enough for calibration to draw windows from the texts."""

    eos_token_id = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[list(text.encode()) for text in texts])


def copy_wikitext(tmp_path: Path) -> Path:
    copy = tmp_path / "wikitext.raw"
    shutil.copyfile(DATA / WIKITEXT, copy)
    return copy


def cell_reading(copy: Path, tmp_path: Path, *overrides: str) -> ValidatedCell:
    """A magnitude cell whose general wikitext perplexity text is `copy`."""
    return validate(compose_config([*TINY, "pruner=magnitude", f"results.dir={tmp_path / 'runs'}",
                                    f"data.general.perplexity.wikitext2.path={copy}", *overrides]))


def edit_keeping_size_and_time(path: Path) -> None:
    """Overwrite the file in place with other bytes of its length, then restore its times."""
    before = path.stat()
    data = path.read_bytes()
    path.write_bytes(data[1:] + data[:1])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def text_of(path: Path) -> str:
    """What the raw-text reader makes of the file's bytes on disk now."""
    return path.read_bytes().decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n")


def wikitext_spec(copy: Path) -> dict[str, str]:
    return {"path": str(copy), "format": "raw"}


def test_a_file_read_twice_in_one_cell_is_read_from_disk_once(tmp_path: Path, monkeypatch) -> None:
    copy = copy_wikitext(tmp_path)
    opened: Counter[Path] = Counter()
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened[Path(path)] += 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)  # every read of a file opens it through
    monkeypatch.setattr("io.open", counting_open)  # one of these (pathlib's through io.open)
    cell_reading(copy, tmp_path)  # validation reads it once
    first = load_texts(wikitext_spec(copy), tmp_path)  # as evaluation does
    second = load_texts(wikitext_spec(copy), tmp_path)
    assert opened[copy.resolve()] == 1 and first == second


def test_the_key_hashes_exactly_the_bytes_calibration_and_evaluation_consume(tmp_path: Path,
                                                                             monkeypatch) -> None:
    """The default D-Pruner cell (general and domain calibration, every evaluation text and task
    file): every byte string any reader got hashes to the key's `inputs` entry of its file, and
    every file read is in the key."""
    served: dict[Path, set[str]] = {}
    real_read = snapshot.Snapshot.read

    def spying_read(self: snapshot.Snapshot, path: Path | str) -> bytes:
        data = real_read(self, path)
        served.setdefault(Path(path).resolve(), set()).add(hashlib.sha256(data).hexdigest()[:16])
        return data

    monkeypatch.setattr(snapshot.Snapshot, "read", spying_read)
    cfg = compose_config([*TINY, f"results.dir={tmp_path / 'runs'}", "calib.nsamples=2", "calib.seqlen=32"])
    cell = validate(cfg)
    served.clear()  # what the run reads after validation, as run.py does:
    cell.calibration(ByteTokenizer())
    for key, spec in perplexity_sources(cfg.domain, cfg.data.general).items():
        load_texts(spec, cell.data_root, key)
    for name, spec in task_sources(cfg.domain.tasks, cell.data_root).items():
        read_task(name, spec)
    inputs = {(cell.data_root / name).resolve(): digest for name, digest in cell.config["inputs"].items()}
    assert set(served) == set(inputs)
    assert {path: digests for path, digests in served.items()} == {path: {d} for path, d in inputs.items()}
    cell.check_inputs()  # nothing changed: no error


def test_a_file_replaced_after_validation_fails_the_cell_naming_it(tmp_path: Path) -> None:
    copy = copy_wikitext(tmp_path)
    cell = cell_reading(copy, tmp_path)
    replacement = tmp_path / "new.raw"
    replacement.write_text("A different text entirely.\n", encoding="utf-8")
    os.replace(replacement, copy)
    pattern = rf"{re.escape(str(copy.resolve()))} changed while the cell ran \(validated with sha256 " \
              rf"{cell.config['inputs'][str(copy.resolve())]}, .*\); nothing recorded"
    with pytest.raises(ConfigError, match=pattern):
        cell.check_inputs()
    with pytest.raises(ConfigError, match=pattern):  # and a later use fails at once, before hours of work
        load_texts(wikitext_spec(copy), tmp_path)


def test_an_edit_keeping_size_and_time_is_caught_and_keys_a_new_validation_anew(tmp_path: Path) -> None:
    """No size-and-time shortcut: the running cell's check re-hashes, and a new validation (a fresh
    snapshot, not the last cell's bytes) hashes the new content into a new key."""
    copy = copy_wikitext(tmp_path)
    old = cell_reading(copy, tmp_path)
    edit_keeping_size_and_time(copy)
    assert load_texts(wikitext_spec(copy), tmp_path) == [text_of(DATA / WIKITEXT)]  # the bytes it read
    with pytest.raises(ConfigError, match=rf"{re.escape(str(copy.resolve()))} changed while the cell ran"):
        old.check_inputs()
    new = cell_reading(copy, tmp_path)
    name = str(copy.resolve())
    assert new.config["inputs"][name] == hashlib.sha256(copy.read_bytes()).hexdigest()[:16]
    assert new.config["inputs"][name] != old.config["inputs"][name] and new.key != old.key
    assert load_texts(wikitext_spec(copy), tmp_path) == [text_of(copy)]
    new.check_inputs()


def test_a_file_too_large_to_keep_is_read_again_and_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(snapshot, "KEEP_BYTES_UP_TO", 16)
    copy = copy_wikitext(tmp_path)
    cell = cell_reading(copy, tmp_path)
    assert load_texts(wikitext_spec(copy), tmp_path)  # unchanged: read again, same hash
    edit_keeping_size_and_time(copy)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(copy.resolve()))} changed while the cell ran"):
        load_texts(wikitext_spec(copy), tmp_path)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(copy.resolve()))} changed while the cell ran"):
        cell.check_inputs()


def test_outside_a_cell_reads_go_to_disk(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(snapshot, "_cell", None)
    path = tmp_path / "a.txt"
    path.write_text("first", encoding="utf-8")
    assert snapshot.read_bytes(path) == b"first"
    path.write_text("other", encoding="utf-8")
    assert snapshot.read_bytes(path) == b"other"


REPLACE_AFTER_EVALUATION = """
import os, runpy, sys
import evals.suite
target, evaluate = sys.argv[1], evals.suite.evaluate
def evaluate_then_replace(*args, **kwargs):
    result = evaluate(*args, **kwargs)
    with open(target + ".new", "w", encoding="utf-8") as out:
        out.write("Another text, put in place while the cell ran.\\n")
    os.replace(target + ".new", target)
    return result
evals.suite.evaluate = evaluate_then_replace
sys.argv = sys.argv[2:]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.mark.slow
def test_run_py_records_nothing_when_a_file_is_replaced_while_the_cell_runs(tmp_path: Path) -> None:
    """The whole run: the file is replaced after evaluation, before the record; one `error:` line
    names it, exit 2, no record."""
    copy = copy_wikitext(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", REPLACE_AFTER_EVALUATION, str(copy), "run.py", *TINY,
                           "pruner=magnitude", f"results.dir={tmp_path / 'runs'}",
                           f"data.general.perplexity.wikitext2.path={copy}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{copy.resolve()} changed while the cell ran" in errors[0], errors
    assert not list((tmp_path / "runs").glob("*.json"))
