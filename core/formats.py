"""One parser per data file format (UTF-8 text, raw text, JSON lines, a JSON object, RQE XML,
PubMedQA's pair of JSON files), and the typed reads of a row's fields. Calibration
(core/domain_texts.py), perplexity and general text (core/data.py) and the task readers
(evals/tasks/readers.py) all read through them, so a file reads the same, and fails the same,
whoever reads it. The rules, for every format:

- UTF-8 only; a leading byte order mark is dropped (it is never part of a text);
- JSON lines split on "\\n" alone (a "\\r" before it dropped), so U+2028 and the like inside a
  JSON string are text, as JSON has them;
- a field read as text must hold a string, never a number or null that would be scored as its
  spelling; a reference summary and every answer choice must hold some text.

A bad file or field is one ConfigError naming the file, the line (or item) and the field."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import snapshot
from core.errors import ConfigError

BYTE_ORDER_MARK = "\ufeff"
RQE_LAYOUT = '<pair pid="..." value="true|false"><chq>...</chq><faq>...</faq></pair>'
RQE_VALUES = ("true", "false")


class Record(dict):
    """A row of a data file that knows where it is (`file:line`, a file and an item id, or a
    hub dataset's row), so that a bad field is reported there."""

    def __init__(self, fields: Mapping[str, Any], where: str) -> None:
        super().__init__(fields)
        self.where = where


def where_of(row: Mapping[str, Any]) -> str:
    """Where a row is, for an error (a plain mapping, as a caller may pass a template, is "a row")."""
    return getattr(row, "where", "a row")


def read_text(path: Path) -> str:
    """A whole file as UTF-8 text without its byte order mark; bad bytes are one error naming the
    line and byte offset. The bytes are the cell's own copy (core/snapshot.py): read once per
    cell, the very bytes its record key hashes."""
    try:
        raw = snapshot.read_bytes(path)
    except OSError as err:
        raise ConfigError(f"{path} cannot be read ({err.strerror or err})") from err
    try:
        return raw.decode("utf-8").removeprefix(BYTE_ORDER_MARK)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line} is not UTF-8 (byte offset {err.start}: {err.reason}); "
                          "save the file as UTF-8") from None


def raw_text(path: Path) -> str:
    """A plain-text document, with Windows line ends as "\\n"."""
    return read_text(path).replace("\r\n", "\n")


def read_jsonl(path: Path, fields: Iterable[str] = ()) -> list[Record]:
    """Rows of a JSON-lines file, each an object holding the fields the caller needs; blank lines
    hold none."""
    need = list(fields)
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{number} is a JSON {type(row).__name__}; expected an object per line")
        missing = [f for f in need if f not in row]
        if missing:
            raise ConfigError(f"{path}:{number} lacks field(s) {missing}; expected {need}")
        rows.append(Record(row, f"{path}:{number}"))
    return rows


def json_object(path: Path, expected: str) -> dict[str, Any]:
    """A JSON file holding one object (`expected` says what it maps, for the error)."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not readable JSON ({err}); expected {expected}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a JSON {type(value).__name__}; expected {expected}")
    return value


def pubmedqa_items(path: Path) -> dict[str, Record]:
    """PubMedQA's ori_pqal.json: id -> {QUESTION, CONTEXTS, LONG_ANSWER, final_decision, ...},
    in the file's order."""
    items = json_object(path, "an object id -> {QUESTION, CONTEXTS, ...}")
    bad = next((pid for pid, item in items.items() if not isinstance(item, dict)), None)
    if bad is not None:
        raise ConfigError(f"{path}, item {bad} is not an object; expected id -> {{QUESTION, CONTEXTS, ...}}")
    return {pid: Record(item, f"{path}, item {pid}") for pid, item in items.items()}


def pubmedqa_answers(path: Path) -> dict[str, Any]:
    """A PubMedQA split file (test_ground_truth.json): id -> yes/no/maybe."""
    return json_object(path, "an object id -> yes/no/maybe")


@dataclass(frozen=True)
class RqePair:
    pid: str | None
    chq: str  # the consumer's question, stripped
    faq: str  # the frequently asked question, stripped
    entails: bool


def rqe_pairs(path: Path) -> list[RqePair]:
    """MEDIQA 2019 RQE pairs: <pair pid value="true|false"><chq/><faq/></pair>."""
    try:
        root = ET.fromstring(read_text(path))
    except ET.ParseError as err:
        raise ConfigError(f"{path} is not readable XML ({err}); expected {RQE_LAYOUT}") from None
    pairs = []
    for pair in root.iter("pair"):
        chq, faq, value, pid = pair.findtext("chq"), pair.findtext("faq"), pair.get("value"), pair.get("pid")
        if chq is None or faq is None or value is None:
            raise ConfigError(f"{path}: pair {pid} lacks chq, faq or value; expected {RQE_LAYOUT}")
        if value.strip().lower() not in RQE_VALUES:
            raise ConfigError(f"{path}: pair {pid} has value {value!r}; expected one of {list(RQE_VALUES)}")
        pairs.append(RqePair(pid, chq.strip(), faq.strip(), value.strip().lower() == "true"))
    return pairs


# --- typed reads of a row's fields ---------------------------------------------------------------

def _value(row: Mapping[str, Any], field: str) -> Any:
    if field not in row:
        raise ConfigError(f"{where_of(row)} lacks field {field!r}")
    return row[field]


def text(row: Mapping[str, Any], field: str) -> str:
    """A field that holds text: a string, nothing else."""
    value = _value(row, field)
    if not isinstance(value, str):
        raise ConfigError(f"{where_of(row)}: field {field!r} holds {type(value).__name__} "
                          f"{str(value)[:40]!r}; expected text")
    return value


def passage(row: Mapping[str, Any], field: str) -> str:
    """Text, or a list of texts joined by spaces (PubMedQA's CONTEXTS)."""
    value = _value(row, field)
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return " ".join(value)
    return text(row, field)


def reference(row: Mapping[str, Any], field: str) -> str:
    """A reference summary, stripped: text that is not empty (ROUGE against an empty reference is
    0 whatever the model writes)."""
    value = text(row, field).strip()
    if not value:
        raise ConfigError(f"{where_of(row)}: field {field!r} is empty; a reference summary must hold text")
    return value


def choices(row: Mapping[str, Any], names: str | Sequence[str]) -> list[str]:
    """The answer choices: one field holding a list, or one field per choice; at least two, each a
    non-empty text."""
    values = row[names] if isinstance(names, str) else [row[name] for name in names]
    if not (isinstance(values, list) and len(values) >= 2):
        raise ConfigError(f"{where_of(row)}: the choices {names!r} hold {str(values)[:60]!r}; expected at "
                          "least two texts")
    for index, value in enumerate(values):
        field = f"{names}[{index}]" if isinstance(names, str) else names[index]
        if not isinstance(value, str):
            raise ConfigError(f"{where_of(row)}: choice {field!r} holds {type(value).__name__} "
                              f"{str(value)[:40]!r}; expected text")
        if not value.strip():
            raise ConfigError(f"{where_of(row)}: choice {field!r} is empty; every choice must hold text")
    return values
