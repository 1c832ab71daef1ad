"""Readers that turn each task's source files (JSON, JSONL, XML, or a hub dataset) into plain
docs for the lm-eval task YAMLs. They are also the validation run before any model loads, so a
missing, malformed, empty or non-UTF-8 file fails in one line naming the file and what it needs.

A source spec is a mapping with absolute paths (`path`, and for PubMedQA `split`) or `hub`
({id, name, split}) for online users; a user's own task carries its `kind` (kinds.py). The
built-in JSON-lines tasks are kinds with a fixed field mapping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.data import hub_rows, read_jsonl, read_text
from core.errors import ConfigError
from core.files import read_json
from evals.tasks.kinds import Doc, Rows, kind_docs, norm, read_user_task

RQE_CHOICES = ("true", "false")
RQE_LAYOUT = '<pair pid="..." value="true|false"><chq>...</chq><faq>...</faq></pair>'
MEDNLI_FIELDS = {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label", "id": "pairID"}
HQS_FIELDS = {"source": "CHQ", "summary": "Summary", "id": "q_id"}
CASEHOLD_FIELDS = {"prompt": "citing_prompt", "choices": [f"holding_{k}" for k in range(5)], "label": "label",
                   "id": "example_id"}
BILLSUM_FIELDS = {"source": "source", "summary": "summary"}


def _jsonl(spec: Mapping[str, Any]) -> Rows:
    return Rows(spec["path"], read_jsonl(Path(spec["path"])), lines=True)


def _hub(spec: Mapping[str, Any]) -> Rows:
    return Rows(f"hub dataset {spec['hub']['id']}", hub_rows(spec["hub"]))


def pubmedqa(spec: Mapping[str, Any]) -> list[Doc]:
    """PQA-L test questions: the ids of `split` (id -> yes/no/maybe) taken in the order of `path`
    (id -> {QUESTION, CONTEXTS, ...}); the split file itself is sorted by answer, so its order
    would make every small subset all-"yes". A hub set (pubid, question, context.contexts,
    final_decision) is restricted to the split's ids when a split file is given."""
    split = Path(spec["split"]) if spec.get("split") else None
    answers = read_json(split, "an object id -> yes/no/maybe") if split else None
    if spec.get("hub"):
        rows = _hub(spec)
        items = [{**row, "contexts": row["context"]["contexts"]} for row in rows.items
                 if answers is None or str(row["pubid"]) in answers]
        return kind_docs("yesno", Rows(rows.origin, items), {"question": "question", "context": "contexts",
                                                             "label": "final_decision", "id": "pubid"})
    path = Path(spec["path"])
    entries = read_json(path, "an object id -> {QUESTION, CONTEXTS}")
    if not isinstance(answers, dict) or not isinstance(entries, dict):
        raise ConfigError(f"{path} and {split} must be JSON objects keyed by PubMed id")
    missing = [pid for pid in answers if pid not in entries]
    if missing:
        raise ConfigError(f"{path} lacks {len(missing)} ids of {split} (e.g. {missing[0]})")
    items = [{**entry, "pid": pid, "answer": answers[pid]}
             for pid, entry in entries.items() if pid in answers]
    return kind_docs("yesno", Rows(str(path), items), {"question": "QUESTION", "context": "CONTEXTS",
                                                       "label": "answer", "id": "pid"})


def rqe(spec: Mapping[str, Any]) -> list[Doc]:
    """MEDIQA 2019 RQE pairs: <pair pid value="true|false"><chq/><faq/></pair>."""
    path = Path(spec["path"])
    try:
        root = ET.fromstring(read_text(path))
    except ET.ParseError as err:
        raise ConfigError(f"{path} is not readable XML ({err}); expected {RQE_LAYOUT}") from None
    docs = []
    for pair in root.iter("pair"):
        chq, faq, value, pid = pair.findtext("chq"), pair.findtext("faq"), pair.get("value"), pair.get("pid")
        if chq is None or faq is None or value is None:
            raise ConfigError(f"{path}: pair {pid} lacks chq, faq or value; expected {RQE_LAYOUT}")
        if norm(value) not in RQE_CHOICES:
            raise ConfigError(f"{path}: pair {pid} has value {value!r}; expected one of {list(RQE_CHOICES)}")
        docs.append({"id": pid, "chq": chq.strip(), "faq": faq.strip(),
                     "label": RQE_CHOICES.index(norm(value))})
    return docs


def mednli(spec: Mapping[str, Any]) -> list[Doc]:
    """The user's own MedNLI copy (mli_test_v1.jsonl: sentence1, sentence2, gold_label)."""
    return kind_docs("nli", _jsonl(spec), MEDNLI_FIELDS)


def hqs(spec: Mapping[str, Any]) -> list[Doc]:
    """MEDIQA 2021 question summarization: consumer question (CHQ) -> reference summary."""
    return kind_docs("summary", _jsonl(spec), HQS_FIELDS)


def casehold(spec: Mapping[str, Any]) -> list[Doc]:
    """CaseHOLD: a citing text with a <HOLDING> slot and five candidate holdings."""
    return kind_docs("choice", _hub(spec) if spec.get("hub") else _jsonl(spec), CASEHOLD_FIELDS)


def billsum(spec: Mapping[str, Any]) -> list[Doc]:
    """BillSum: bill text -> reference summary (the hub set names the text `text`)."""
    if spec.get("hub"):
        return kind_docs("summary", _hub(spec), {**BILLSUM_FIELDS, "source": "text"})
    return kind_docs("summary", _jsonl(spec), BILLSUM_FIELDS)


READERS: dict[str, Callable[[Mapping[str, Any]], list[Doc]]] = {
    "pubmedqa": pubmedqa, "rqe": rqe, "mednli": mednli, "hqs": hqs, "casehold": casehold, "billsum": billsum,
}


def read_task(name: str, spec: Mapping[str, Any]) -> list[Doc]:
    """Docs of task `name` with the reader the run uses; a source with no items is an error (it
    would score nothing and report nothing)."""
    docs = read_user_task(spec) if spec.get("kind") else READERS[name](spec)
    if not docs:
        origin = spec.get("split") or spec.get("path") or f"hub dataset {spec['hub']['id']}"
        raise ConfigError(f"{origin} has no items (task {name}); a task needs at least one")
    return docs
