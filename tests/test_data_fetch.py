"""The data a user can fetch: the manifest describes ../shared/data exactly, a fetch from a server
that serves a copy of it gives a tree the suite runs on, and bad downloads or an unreachable
source fail in one line naming the dataset and the command (all offline: local server, file://)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import core.data
from bench.cell import validate
from bench.data.__main__ import main as data_main
from bench.data.convert import RECIPES
from bench.data.fetch import fetch
from bench.data.manifest import MANIFEST, Entry, load_manifest, select
from bench.defaults import compose_config
from core.data import resolve_data_root
from core.errors import ConfigError
from core.files import read_json

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
TINY = ["model=tiny-llama", "eval=smoke", "logger=none", "pruner=wanda", "calib.nsamples=2",
        "calib.seqlen=64", "driver.progress=false"]
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs the shipped data in ../shared/data")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mirror() -> Iterator[str]:
    """../shared/data served over http on a free local port."""
    handler = functools.partial(QuietHandler, directory=DATA)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def fetched(mirror: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("fetched") / "data"
    fetch(load_manifest(), dest, mirror, progress=False)
    return dest


def entry(path: str) -> Entry:
    return next(e for e in load_manifest() if e.path == path)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- the manifest is the shipped tree -------------------------------------------------------------

def test_every_manifest_entry_is_the_shipped_file() -> None:
    entries = load_manifest()
    assert [e.path for e in entries if e.mismatch(DATA / e.path) is not None] == []
    shipped = {p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file()} - {"README.md"}
    assert sorted(e.path for e in entries) == sorted(shipped)


def test_every_source_is_pinned_to_a_revision_or_marked_mirror_only() -> None:
    for raw in read_json(MANIFEST)["files"]:
        source = raw["source"]
        assert raw["license"] and source["repo"], raw["path"]
        if source["url"] is None:
            assert source["revision"] is None and "mirror" in raw["note"], raw["path"]
        else:
            pinned = f"/{source['revision']}"
            assert source["url"].startswith("https://") and pinned in source["url"], raw["path"]
        if "convert" in raw:
            assert raw["convert"]["recipe"] in RECIPES and raw["convert"]["how"], raw["path"]


# --- a fetched tree -------------------------------------------------------------------------------

def test_fetch_from_a_mirror_lays_out_a_tree_that_verifies(fetched: Path) -> None:
    assert [e.path for e in load_manifest() if e.mismatch(fetched / e.path) is not None] == []
    assert [p.name for p in fetched.rglob(".*")] == []  # no staged or partial file left behind
    assert data_main(["verify", "--root", str(fetched)]) == 0


@pytest.mark.parametrize("domain", ["legal", "healthcare"])
def test_the_suite_validates_a_cell_on_the_fetched_tree(fetched: Path, tmp_path: Path, domain: str) -> None:
    cfg = compose_config([*TINY, f"domain={domain}", f"data.root={fetched}",
                          f"results.dir={tmp_path / 'runs'}"])
    cell = validate(cfg)
    assert cell.data_root == fetched
    assert "general/wikitext2_test.raw" in cell.config["inputs"]  # read from the fetched tree


def test_present_files_are_kept_without_downloading(fetched: Path, capsys: pytest.CaptureFixture) -> None:
    fetch(select(load_manifest(), ["casehold"]), fetched, closed_port_url(), progress=False)  # nothing to get
    assert capsys.readouterr().out.count("present") == 2


def test_verify_names_a_damaged_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "legal" / "casehold" / "test.jsonl"
    target.parent.mkdir(parents=True)
    target.write_bytes((DATA / "legal/casehold/test.jsonl").read_bytes()[:-1])
    assert data_main(["verify", "--root", str(tmp_path)]) == 1
    assert "legal/casehold/test.jsonl: 341166 bytes, expected 341167" in capsys.readouterr().out


# --- failures are one line ------------------------------------------------------------------------

def test_corrupted_download_fails_naming_the_file_and_writes_nothing(tmp_path: Path) -> None:
    pubmedqa = select(load_manifest(), ["pubmedqa"])
    for copy in pubmedqa:
        (tmp_path / "mirror" / copy.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mirror" / copy.path).write_bytes((DATA / copy.path).read_bytes())
    truth = tmp_path / "mirror" / "healthcare" / "pubmedqa" / "test_ground_truth.json"
    truth.write_text(truth.read_text().replace('"yes"', '"no "', 1))  # same size, other bytes
    dest = tmp_path / "data"
    with pytest.raises(ConfigError) as err:
        fetch(pubmedqa, dest, (tmp_path / "mirror").as_uri(), progress=False)
    message = str(err.value)
    assert "\n" not in message and "healthcare/pubmedqa/test_ground_truth.json" in message
    assert "'pubmedqa'" in message and "SHA-256" in message
    assert not (dest / "healthcare/pubmedqa/test_ground_truth.json").exists()
    assert [p.name for p in dest.rglob(".*")] == []


def test_a_wrong_file_in_the_tree_is_replaced(tmp_path: Path, mirror: str) -> None:
    target = tmp_path / "healthcare" / "hqs" / "mediqa2021_test.jsonl"
    target.parent.mkdir(parents=True)
    target.write_text("{}\n")
    fetch(select(load_manifest(), ["mediqa2021"]), tmp_path, mirror, progress=False)
    assert entry("healthcare/hqs/mediqa2021_test.jsonl").mismatch(target) is None


def test_unreachable_source_is_one_error_line_naming_dataset_and_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.data", "fetch", "--mirror", closed_port_url(),
                           "--dest", str(tmp_path / "data"), "--only", "wikitext2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "'wikitext2'" in lines[0] and "python -m bench.data fetch --only wikitext2" in lines[0]


def test_unknown_dataset_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown dataset.*'nope'.*casehold"):
        select(load_manifest(), ["nope"])


# --- converted files ------------------------------------------------------------------------------

def shipped_rows(item: Entry) -> list[dict]:
    return [json.loads(line) for line in (DATA / item.path).read_text(encoding="utf-8").splitlines()]


def fetch_from(item: Entry, upstream: Path, dest: Path) -> Path:
    """The entry fetched, and converted, from a local stand-in for its upstream artifact."""
    fetch([dataclasses.replace(item, url=upstream.as_uri())], dest, progress=False)
    return dest / item.path


def c4_parquet(path: Path, rows: list[dict]) -> Path:
    """A table of the rows with the columns in another order than the JSON lines (the recipe's
    `fields` fix the order)."""
    columns = {name: [row[name] for row in rows] for name in ("timestamp", "url", "text")}
    pq.write_table(pa.table(columns), path)
    return path


def test_c4_recipe_reproduces_the_shipped_file_from_its_rows(tmp_path: Path) -> None:
    c4 = entry("general/c4_validation_2k.jsonl")
    upstream = c4_parquet(tmp_path / "c4.parquet", shipped_rows(c4))
    assert c4.mismatch(fetch_from(c4, upstream, tmp_path / "data")) is None


def test_a_conversion_that_differs_fails_and_points_at_a_mirror(tmp_path: Path) -> None:
    c4 = entry("general/c4_validation_2k.jsonl")
    rows = shipped_rows(c4)
    rows[0]["text"] += " "
    upstream = c4_parquet(tmp_path / "c4.parquet", rows)
    with pytest.raises(ConfigError) as err:
        fetch_from(c4, upstream, tmp_path / "data")
    assert "\n" not in str(err.value) and "converted from" in str(err.value) and "--mirror" in str(err.value)
    assert not (tmp_path / "data" / c4.path).exists()


def medquad_archive(path: Path, rows: list[dict]) -> Path:
    """A MedQuAD-shaped archive holding the rows: one XML document per (collection, file), written
    in reverse order, texts padded with whitespace, plus unanswered pairs and a collection whose
    answers were removed, as upstream."""
    documents: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        documents.setdefault((row["collection"], row["file"]), []).append(row)
    documents[("10_MPlus_ADAM_QA", "0000001.xml")] = [{"focus": "x", "question": "What is x ?", "answer": ""}]
    with zipfile.ZipFile(path, "w") as archive:
        for (collection, file), pairs in reversed(documents.items()):
            document = ET.Element("Document")
            ET.SubElement(document, "Focus").text = pairs[0]["focus"]
            qa_pairs = ET.SubElement(document, "QAPairs")
            for pair in [*pairs, {"question": "Unanswered ?", "answer": "  "}]:
                element = ET.SubElement(qa_pairs, "QAPair")
                ET.SubElement(element, "Question").text = f"\n\t{pair['question']} "
                ET.SubElement(element, "Answer").text = pair["answer"] and f"{pair['answer']}\n\t"
            archive.writestr(f"MedQuAD-rev/{collection}/{file}", ET.tostring(document, encoding="utf-8"))
    return path


def test_medquad_recipe_reproduces_the_shipped_file_from_its_pairs(tmp_path: Path) -> None:
    medquad = entry("healthcare/medquad/medquad_answers.jsonl")
    upstream = medquad_archive(tmp_path / "medquad.zip", shipped_rows(medquad))
    assert medquad.mismatch(fetch_from(medquad, upstream, tmp_path / "data")) is None


# --- data.root falls back to the fetched tree -----------------------------------------------------

@pytest.fixture
def no_shipped_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(core.data, "SHIPPED_DATA_ROOT", tmp_path / "absent")
    monkeypatch.delenv(core.data.DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv(core.data.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def test_data_root_falls_back_to_the_fetched_tree(no_shipped_data: Path) -> None:
    no_shipped_data.mkdir(parents=True)
    assert resolve_data_root(None) == no_shipped_data


def test_shipped_data_comes_before_the_fetched_tree(no_shipped_data: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    no_shipped_data.mkdir(parents=True)
    monkeypatch.setattr(core.data, "SHIPPED_DATA_ROOT", DATA)
    assert resolve_data_root(None) == DATA


def test_no_data_anywhere_names_the_fetch_command(no_shipped_data: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_data_root(None)
    assert "\n" not in str(err.value)
    assert str(no_shipped_data) in str(err.value) and "python -m bench.data fetch" in str(err.value)
