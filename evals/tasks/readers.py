"""Readers that turn each task's source files (JSON, JSONL, XML, or a hub dataset) into plain
docs for the lm-eval task YAMLs. They are also the validation run before any model loads, so a
missing or malformed file fails in one line naming the file and the fields it needs.

A source spec is a mapping with absolute paths (`path`, and for PubMedQA `split`) or `hub`
({id, name, split}) for online users."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.data import read_jsonl
from core.errors import ConfigError
from core.files import read_json

Doc = dict[str, Any]

PUBMEDQA_CHOICES = ("yes", "no", "maybe")
RQE_CHOICES = ("true", "false")
MEDNLI_CHOICES = ("entailment", "contradiction", "neutral")
RQE_LAYOUT = '<pair pid="..." value="true|false"><chq>...</chq><faq>...</faq></pair>'


def _label(path: Path, value: Any, choices: tuple[str, ...], where: str) -> int:
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{path}: {where} has label {value!r}; expected one of {list(choices)}")
    return choices.index(text)


def _hub_rows(hub: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset split (online users only)."""
    import datasets

    return list(datasets.load_dataset(hub["id"], hub.get("name"), split=hub.get("split", "test")))


def _pubmedqa_doc(pid: str, entry: Mapping[str, Any], label: int) -> Doc:
    contexts = entry["CONTEXTS"] if "CONTEXTS" in entry else entry["context"]["contexts"]
    question = entry["QUESTION"] if "QUESTION" in entry else entry["question"]
    return {"id": pid, "question": question, "context": " ".join(contexts), "label": label}


def pubmedqa(spec: Mapping[str, Any]) -> list[Doc]:
    """PQA-L test questions: the ids of `split` (id -> yes/no/maybe) taken in the order of `path`
    (id -> {QUESTION, CONTEXTS, ...}); the split file itself is sorted by answer, so its order
    would make every small subset all-"yes". A hub set (pubid, question, context.contexts,
    final_decision) is restricted to the split's ids when a split file is given."""
    split = Path(spec["split"]) if spec.get("split") else None
    answers = read_json(split, "an object id -> yes/no/maybe") if split else None
    if spec.get("hub"):
        hub = Path(spec["hub"]["id"])
        rows = [row for row in _hub_rows(spec["hub"]) if answers is None or str(row["pubid"]) in answers]
        return [_pubmedqa_doc(str(row["pubid"]), row,
                              _label(hub, row["final_decision"], PUBMEDQA_CHOICES, f"pubid {row['pubid']}"))
                for row in rows]
    path = Path(spec["path"])
    entries = read_json(path, "an object id -> {QUESTION, CONTEXTS}")
    if not isinstance(answers, dict) or not isinstance(entries, dict):
        raise ConfigError(f"{path} and {split} must be JSON objects keyed by PubMed id")
    missing = [pid for pid in answers if pid not in entries]
    if missing:
        raise ConfigError(f"{path} lacks {len(missing)} ids of {split} (e.g. {missing[0]})")
    docs = []
    for pid, entry in entries.items():
        if pid not in answers:
            continue
        if not {"QUESTION", "CONTEXTS"} <= set(entry):
            raise ConfigError(f"{path}: entry {pid} lacks QUESTION or CONTEXTS; expected both")
        docs.append(_pubmedqa_doc(pid, entry, _label(split, answers[pid], PUBMEDQA_CHOICES, f"id {pid}")))
    return docs


def rqe(spec: Mapping[str, Any]) -> list[Doc]:
    """MEDIQA 2019 RQE pairs: <pair pid value="true|false"><chq/><faq/></pair>."""
    path = Path(spec["path"])
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise ConfigError(f"{path} is not readable XML ({err}); expected {RQE_LAYOUT}") from err
    docs = []
    for pair in root.iter("pair"):
        chq, faq = pair.findtext("chq"), pair.findtext("faq")
        if chq is None or faq is None or pair.get("value") is None:
            raise ConfigError(f"{path}: pair {pair.get('pid')} lacks chq, faq or value; expected all three")
        label = _label(path, pair.get("value"), RQE_CHOICES, f"pair {pair.get('pid')}")
        docs.append({"id": pair.get("pid"), "chq": chq.strip(), "faq": faq.strip(), "label": label})
    if not docs:
        raise ConfigError(f"{path} has no <pair> elements; expected {RQE_LAYOUT}")
    return docs


def mednli(spec: Mapping[str, Any]) -> list[Doc]:
    """The user's own MedNLI copy (mli_test_v1.jsonl: sentence1, sentence2, gold_label)."""
    path = Path(spec["path"])
    rows = read_jsonl(path, ["sentence1", "sentence2", "gold_label"])
    return [{"id": str(row.get("pairID", i)), "premise": row["sentence1"], "hypothesis": row["sentence2"],
             "label": _label(path, row["gold_label"], MEDNLI_CHOICES, f"line {i + 1}")}
            for i, row in enumerate(rows)]


def hqs(spec: Mapping[str, Any]) -> list[Doc]:
    """MEDIQA 2021 question summarization: consumer question (CHQ) -> reference summary."""
    rows = read_jsonl(Path(spec["path"]), ["CHQ", "Summary"])
    return [{"id": str(row.get("q_id", i)), "question": row["CHQ"].strip(), "summary": row["Summary"].strip()}
            for i, row in enumerate(rows)]


def casehold(spec: Mapping[str, Any]) -> list[Doc]:
    """CaseHOLD: a citing text with a <HOLDING> slot and five candidate holdings."""
    fields = ["citing_prompt", *(f"holding_{k}" for k in range(5)), "label"]
    path = Path(spec["hub"]["id"]) if spec.get("hub") else Path(spec["path"])
    rows = _hub_rows(spec["hub"]) if spec.get("hub") else read_jsonl(path, fields)
    docs = []
    for i, row in enumerate(rows):
        label = str(row["label"]).strip()
        if label not in {"0", "1", "2", "3", "4"}:
            raise ConfigError(f"{path}: row {i + 1} has label {row['label']!r}; expected 0..4")
        docs.append({"id": str(row.get("example_id", i)), "prompt": row["citing_prompt"],
                     "choices": [row[f"holding_{k}"] for k in range(5)], "label": int(label)})
    return docs


def billsum(spec: Mapping[str, Any]) -> list[Doc]:
    """BillSum: bill text -> reference summary (the hub set names the text `text`)."""
    if spec.get("hub"):
        rows = [{"source": row["text"], "summary": row["summary"]} for row in _hub_rows(spec["hub"])]
    else:
        rows = read_jsonl(Path(spec["path"]), ["source", "summary"])
    return [{"id": str(i), "source": row["source"].strip(), "summary": row["summary"].strip()}
            for i, row in enumerate(rows)]


READERS: dict[str, Callable[[Mapping[str, Any]], list[Doc]]] = {
    "pubmedqa": pubmedqa, "rqe": rqe, "mednli": mednli, "hqs": hqs, "casehold": casehold, "billsum": billsum,
}
