"""Fault injection: bad inputs and faults a user meets, each caught before the model loads with one
`error:` line naming the cause, and never a record for empty or broken data.

Most cases call the same validation run.py runs (bench.cell.validate on a composed config), which
is fast; the subprocess cases check the command line's contract: exit code, a single line, no
traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cell import validate
from bench.perf.cell import compose_config
from bench.results.records import evidence_problems, git_revision, save_record
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
TINY = ["model=tiny-llama", "eval=smoke", "logger=none", "pruner=wanda", "calib.nsamples=2",
        "calib.seqlen=64", "driver.progress=false"]


def check(tmp_path: Path, *overrides: str):
    cfg = compose_config([*TINY, f"results.dir={tmp_path / 'runs'}", *overrides])
    return validate(cfg)


def fails(tmp_path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        check(tmp_path, *overrides)
    assert "\n" not in str(err.value)
    return str(err.value)


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --- silent wrong results become errors -----------------------------------------------------------

def test_empty_user_perplexity_file_fails(tmp_path: Path) -> None:
    empty = write(tmp_path / "book.txt", "")
    assert "has no text" in fails(tmp_path, f"+domain.perplexity.mine={empty}")


def test_blank_jsonl_texts_fail(tmp_path: Path) -> None:
    blank = write(tmp_path / "ppl.jsonl", '{"text": "  "}\n{"text": ""}\n')
    message = fails(tmp_path, f"data.general.perplexity.wikitext2.path={blank}",
                    "data.general.perplexity.wikitext2.format=jsonl",
                    "+data.general.perplexity.wikitext2.field=text")
    assert "has no text" in message and str(blank) in message


def test_edited_data_file_changes_the_key(tmp_path: Path) -> None:
    text = write(tmp_path / "book.txt", "A first version of the user's own text. " * 20)
    first = check(tmp_path, f"+domain.perplexity.mine={text}")
    again = check(tmp_path, f"+domain.perplexity.mine={text}")
    time.sleep(0.01)
    write(text, "An edited version of the user's own text. " * 20)
    edited = check(tmp_path, f"+domain.perplexity.mine={text}")
    assert first.key == again.key != edited.key
    assert str(text) in edited.config["inputs"]
    assert "general/wikitext2_test.raw" in edited.config["inputs"]  # relative to the data root


def test_record_without_evidence_is_refused(tmp_path: Path) -> None:
    record = {"key": "k", "metrics": {"legal/x/ppl": 1.0, "legal/y/acc": float("nan")},
              "eval": {"details": {"legal/x": {"tokens": 0}, "legal/y": {"items": 5}}}}
    problems = evidence_problems(record["metrics"], record["eval"]["details"])
    assert problems == ["legal/y/acc=nan is not a finite number", "legal/x was scored on 0 tokens"]
    with pytest.raises(ConfigError, match="nothing recorded"):
        save_record(tmp_path, record)
    assert not list(tmp_path.iterdir())
    assert evidence_problems({"a/b/acc": 0.5}, {"a/b": {"items": 3}}) == []


def test_record_names_the_revision_the_process_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    git_revision.cache_clear()
    started = git_revision()
    moved = subprocess.CompletedProcess([], 0, stdout="0" * 40, stderr="")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: moved)  # the checkout moves mid-grid
    assert git_revision() == started and not started.startswith("0" * 40)
    git_revision.cache_clear()
    assert git_revision().startswith("0" * 40)  # asked afresh, the moved checkout answers
    git_revision.cache_clear()


@pytest.mark.parametrize(("overrides", "expected"), [
    (["eval.perplexity.stride=0"], "eval.perplexity.stride=0 must be >= 1"),
    (["eval.perplexity.stride=abc"], "eval.perplexity.stride='abc' must be a whole number"),
    (["eval.perplexity.window=4096", "eval.perplexity.stride=4096"], "exceeds the model's context of 2048"),
    (["eval.tasks.limit.casehold=0"], "eval.tasks.limit.casehold=0 must be >= 1"),
    (["+eval.tasks.limit.casehld=3"], "eval.tasks.limit.casehld: no such task"),
    (["driver.offload=maybe"], "driver.offload='maybe' must be true or false"),
    (["force=maybe"], "force='maybe' must be true or false"),
    (["pruner=dpruner", "pruner.update_weights=sometimes"], "pruner.update_weights='sometimes' must be true"),
    (["pruner=dpruner", "pruner.domain_calib.seqlen=4096"], "domain_calib.seqlen=4096 (domain windows)"),
    (["pruner=dpruner", "domain.calib.max_tokens=abc"], "max_tokens='abc' must be a whole number"),
    (["+domain.tasks.foo=3"], "domain.tasks.foo=3 is not a task spec"),
    (["+domain.perplexity.mine=null"], "domain.perplexity.mine names no file"),
])
def test_bad_setting_is_named_before_the_model_loads(tmp_path: Path, overrides: list[str],
                                                     expected: str) -> None:
    assert expected in fails(tmp_path, *overrides)


# --- late failures move before the model loads --------------------------------------------------

@pytest.mark.parametrize(("kind", "data", "expected"), [
    ("raw", b"caf\xc3\xa9\nbad \xff byte\n", ":2 is not UTF-8 (byte offset 10"),
    ("jsonl", b'{"text": "fine"}\n{"text": broken\n', ":2 is not valid JSON"),
    ("jsonl", b'{"text": "fine"}\n["a", "list"]\n', ":2 is a JSON list"),
    ("jsonl", b'{"text": "fine"}\n{"body": "no text field"}\n', ":2 lacks field(s) ['text']"),
])
def test_broken_perplexity_file_fails_naming_the_line(tmp_path: Path, kind: str, data: bytes,
                                                      expected: str) -> None:
    path = write(tmp_path / f"ppl.{'txt' if kind == 'raw' else 'jsonl'}", data)
    message = fails(tmp_path, f"+domain.perplexity.mine={path}")
    assert str(path) in message and expected in message


def test_unwritable_results_folder_fails(tmp_path: Path) -> None:
    blocker = write(tmp_path / "a_file", "not a folder")
    assert "is not a writable folder" in fails(tmp_path, f"results.dir={blocker}")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "is not a writable folder" in fails(tmp_path, f"results.dir={locked}")
    assert not list(tmp_path.glob("runs/.probe*"))


def test_calibration_longer_than_the_context_fails(tmp_path: Path) -> None:
    message = fails(tmp_path, "calib.seqlen=4096")
    assert "calib.seqlen=4096" in message and "context of 2048" in message


def test_empty_calibration_source_fails(tmp_path: Path) -> None:
    empty = write(tmp_path / "c4.jsonl", "")
    assert "has no text" in fails(tmp_path, f"data.general.calib.path={empty}")


def test_empty_domain_calibration_source_fails(tmp_path: Path) -> None:
    empty = write(tmp_path / "bills.jsonl", "\n")
    message = fails(tmp_path, "pruner=dpruner", f"domain.calib.sources.billsum.path={empty}")
    assert "domain.calib.sources.billsum" in message and "has no items" in message


def test_hub_text_while_offline_fails_naming_the_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    message = fails(tmp_path, "+domain.perplexity.hubtext.hub.id=someone/some-corpus")
    assert "'someone/some-corpus' cannot be loaded" in message and "local `path`" in message


# --- user data done right -------------------------------------------------------------------------

def test_plain_path_perplexity_entry_works(tmp_path: Path) -> None:
    text = write(tmp_path / "notes.md", "Some domain notes written by the user. " * 10)
    rows = write(tmp_path / "docs.jsonl", json.dumps({"text": "A user document. " * 10}) + "\n")
    cell = check(tmp_path, f"+domain.perplexity.notes={text}", f"+domain.perplexity.docs={rows}")
    assert {str(text), str(rows)} <= set(cell.config["inputs"])


def test_unknown_extension_names_the_formats(tmp_path: Path) -> None:
    odd = write(tmp_path / "book.pdf", "text")
    message = fails(tmp_path, f"+domain.perplexity.mine={odd}")
    assert "cannot tell the format" in message and ".jsonl" in message


def test_data_path_that_is_a_folder_fails(tmp_path: Path) -> None:
    folder = tmp_path / "corpus.txt"
    folder.mkdir()
    assert "is a folder, not a file" in fails(tmp_path, f"+domain.perplexity.mine={folder}")


# --- the command line: one line, the right exit code, nothing left ------------------------------

def run(*overrides: str, results: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "run.py", *TINY, f"results.dir={results}", *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_empty_text_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    empty = write(tmp_path / "book.txt", "")
    process = run(f"+domain.perplexity.mine={empty}", results=tmp_path / "runs")
    out, err = process.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "load: model" not in out
    assert not list((tmp_path / "runs").glob("*.json"))


def outcome(process: subprocess.Popen, results: Path) -> tuple[str, str]:
    """(stdout, stderr) of a finished run; the results folder holds no partial file either way."""
    out, err = process.communicate(timeout=120)
    assert not list(results.glob("**/.*.tmp")), err
    return out, err


FINALIZER_CTRL_C = """
import signal, sys, time
sys.path.insert(0, {root!r})
import run
run.catch_interrupts()
class Finalized:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while a finalizer runs
Finalized()
try:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.01)
except KeyboardInterrupt:
    print("interrupted after the finalizer")
"""


def test_ctrl_c_inside_a_finalizer_is_delivered_not_swallowed() -> None:
    """Python swallows an exception raised in `__del__`; run.py's handler re-sends that Ctrl-C so
    the run still stops (without it the loop above runs its 5 s and nothing is printed)."""
    result = subprocess.run([sys.executable, "-c", FINALIZER_CTRL_C.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "interrupted after the finalizer", result.stderr[-2000:]
    assert "Exception ignored" not in result.stderr


@pytest.mark.slow
def test_ctrl_c_at_any_moment_is_one_line_and_no_record(tmp_path: Path) -> None:
    """SIGINT at a sweep of delays from start to the cell's end (spaced by an uninterrupted run's
    duration, so a loaded machine only shifts the phases hit): composition, imports, loading,
    pruning, evaluation, writing. Each run ends in one `interrupted:` line, exit 130, no traceback,
    no record -- unless the record was already written: then it is complete and exit is 0, or the
    one line says it was recorded."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # Python's own start (site imports)
    python_start = time.monotonic() - started  # comes before run.py's first line, out of its reach
    started = time.monotonic()
    whole = run(results=tmp_path / "whole")
    outcome(whole, tmp_path / "whole")
    duration = time.monotonic() - started
    assert whole.returncode == 0
    [done] = (tmp_path / "whole").glob("*.json")
    metrics = set(json.loads(done.read_text())["metrics"])
    steps = 6
    for step in range(steps):
        delay = python_start + 0.2 + step * (duration - python_start - 0.2) / steps
        results = tmp_path / f"at-{step}"
        process = run(results=results)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        out, err = outcome(process, results)
        records = list(results.glob("*.json"))
        said = f"at {delay:.1f} s of {duration:.1f} s: exit {process.returncode}\n{err[-3000:]}"
        assert "Traceback" not in err, said
        if records:
            assert set(json.loads(records[0].read_text())["metrics"]) == metrics, said
        if process.returncode == 0:
            assert records and "done: " in out, said
            break
        interrupted = [line for line in err.splitlines() if line.startswith("interrupted:")]
        assert process.returncode == 130 and len(interrupted) == 1, said
        assert not records or f"recorded ({records[0]})" in interrupted[0], said
        if records:
            break
