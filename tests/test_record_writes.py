"""Records at the two ends of a cell: `finished` only asks whether a complete record exists (any
process may ask), `set_aside_unfinished` alone renames a broken or incomplete one (the leader's
job); a record that cannot be written is one `error:` line and survives in a fallback file."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cell import validate
from bench.perf.cell import compose_config
from bench.results import records
from bench.results.records import finished, record_path, save_record, set_aside_unfinished
from core.errors import ConfigError
from tests.test_distributed import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789abcdef"
TINY = ["model=tiny-llama", "eval=smoke", "logger=none", "pruner=dense", "driver.progress=false"]


def complete(key: str = KEY) -> dict:
    """The smallest record that stands for its cell: a metric backed by per-item evidence."""
    evidence = {"kind": "choice", "ids": ["a", "b"], "gold": [0, 1], "pred": [0, 0], "n_choices": 2}
    return {"key": key, "version": 3, "status": "done", "metrics": {"legal/casehold/acc": 0.5},
            "evidence": {"legal/casehold": evidence}, "eval": {"details": {"legal/casehold": {"items": 2}}}}


INCOMPLETE = {
    "unreadable": ('{"key": "0123456789abcdef", "status": "do', "unreadable record"),
    "not done": (complete() | {"status": "running"}, "not a finished record"),
    "no metrics": ({"status": "done", "metrics": {}}, "it has no metrics"),  # once skipped forever
    "empty metrics": (complete() | {"metrics": {}}, "it has no metrics"),
    "other key": (complete("fedcba9876543210"), "its key is 'fedcba9876543210'"),
    "no evidence": (complete() | {"evidence": {}}, "metric legal/casehold/acc has no evidence"),
    "other metric": (complete() | {"metrics": {"legal/casehold/macro_f1": 0.3, "legal/billsum/rouge1": 0.1}},
                     "metric legal/billsum/rouge1 has no evidence"),
}


def put(folder: Path, content: dict | str) -> Path:
    path = record_path(folder, KEY)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_a_complete_record_is_finished_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert not finished(tmp_path, KEY) and set_aside_unfinished(tmp_path, KEY) is None  # no record yet
    path = save_record(tmp_path, complete())
    assert set_aside_unfinished(tmp_path, KEY) is None and finished(tmp_path, KEY)
    assert path.exists() and capsys.readouterr().out == ""


@pytest.mark.parametrize("case", INCOMPLETE)
def test_asking_about_an_unfinished_record_touches_nothing(tmp_path: Path, case: str) -> None:
    path = put(tmp_path, INCOMPLETE[case][0])
    assert not finished(tmp_path, KEY) and not finished(tmp_path, KEY)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("case", INCOMPLETE)
def test_an_unfinished_record_is_set_aside_with_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            case: str) -> None:
    content, why = INCOMPLETE[case]
    path = put(tmp_path, content)
    aside = set_aside_unfinished(tmp_path, KEY)
    assert aside is not None and aside.name.startswith(f"{KEY}.json.broken-") and not path.exists()
    assert aside.read_text(encoding="utf-8") == (content if isinstance(content, str) else json.dumps(content))
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"warning: record {path}: ") and why in line
    assert line.endswith(f"; kept as {aside.name}, re-running the cell")
    assert not finished(tmp_path, KEY) and set_aside_unfinished(tmp_path, KEY) is None


def test_a_record_that_cannot_be_written_is_kept_in_a_fallback_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runs, temp = tmp_path / "runs", tmp_path / "tmp"
    real = records.write_atomic

    def disk_full(*folders: Path):
        def write(path: Path, text: str) -> Path:
            if Path(path).parent in folders:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, text)
        return write

    monkeypatch.setattr("tempfile.tempdir", str(temp))
    monkeypatch.setattr(records, "write_atomic", disk_full(runs))
    record, path = complete(), record_path(runs, KEY)
    with pytest.raises(ConfigError) as err:
        save_record(runs, record)
    (fallback,) = temp.glob(f"dpruner-bench-{KEY}-*.json")
    assert str(err.value) == (f"record {path} not written (No space left on device); the finished record "
                              f"is saved as {fallback}: move it to {path} to keep the cell")
    assert json.loads(fallback.read_text(encoding="utf-8")) == record
    assert not list(runs.glob("*.json"))

    monkeypatch.setattr(records, "write_atomic", disk_full(runs, temp))
    with pytest.raises(ConfigError, match=r"not written \(No space left on device\); nor saved to .*"
                                          r"\(No space left on device\): the cell's results are lost"):
        save_record(runs, record)


@pytest.mark.slow
def test_a_cell_whose_record_cannot_be_written_ends_in_one_line(tmp_path: Path) -> None:
    """run.py under a file size limit smaller than any record (as on a full disk): one `error:`
    line naming the record and the reason, no traceback, nothing in the results folder."""
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path / "tmp")}
    limit = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); " \
            "sys.argv = sys.argv[1:]; runpy.run_path('run.py', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", limit, "run.py", *TINY, f"results.dir={tmp_path / 'runs'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"error: record {tmp_path / 'runs'}/"), lines
    assert "not written (File too large)" in lines[0] and f"{tmp_path / 'tmp'}/dpruner-bench-" in lines[0]
    assert not list((tmp_path / "runs").glob("*.json"))


@pytest.mark.slow
def test_two_processes_meet_a_broken_record_and_only_the_leader_sets_it_aside(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"results.dir={tmp_path / 'runs'}"])
    key = validate(cfg).key
    (tmp_path / "runs" / f"{key}.json").write_text('{"status": "done", "metrics": {}}', encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={free_port()}", "run.py", *TINY, f"results.dir={tmp_path / 'runs'}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("warning: record ") == 1 and "it has no metrics" in done.stdout
    assert len(list((tmp_path / "runs").glob(f"{key}.json.broken-*"))) == 1
    assert finished(tmp_path / "runs", key)
