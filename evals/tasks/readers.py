"""Task readers, one per file format: each turns a task's source files (or a hub dataset) into the
plain docs its YAML prompts with. A task names its format in its YAML (`metadata.format`,
evals/tasks/declarations.py); the parsing itself is core's (core/formats.py, core/items.py), the
same that calibration reads the training files with. A reader is also the validation run before
any model loads, so a missing, malformed, empty or non-UTF-8 file fails in one line naming the
file and what it needs.

A source spec is a mapping with absolute paths (`path`, and for PubMedQA `split`) or `hub`
({id, name, split}) for online users; a user's own task carries its `kind` and field mapping
(evals/tasks/user_tasks.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import hub_records
from core.errors import ConfigError
from core.formats import Record, pubmedqa_answers, pubmedqa_items, read_jsonl, rqe_pairs
from core.items import BILLSUM_FIELDS, CASEHOLD_FIELDS, MEDNLI_FIELDS, MEQSUM_FIELDS, Item, read_items

PUBMEDQA_FIELDS = {"question": "QUESTION", "context": "CONTEXTS", "label": "answer", "id": "pid"}
PUBMEDQA_HUB_FIELDS = {"question": "question", "context": "contexts", "label": "final_decision",
                       "id": "pubid"}


@dataclass(frozen=True)
class TaskReader:
    read: Callable[[Mapping[str, Any]], list[Item]]
    kind: str | None  # the kind of its docs (core/items.py); None: a shape of its own
    file_keys: tuple[str, ...] = ("path",)  # the spec keys that name local files


def _rows(spec: Mapping[str, Any]) -> list[Record]:
    return hub_records(spec["hub"]) if spec.get("hub") else read_jsonl(Path(spec["path"]))


def _layout(kind: str, fields: Mapping[str, Any], hub_fields: Mapping[str, Any] | None = None) -> TaskReader:
    """A reader of JSON-lines rows (or a hub set's, whose field names may differ) with a fixed
    field mapping onto a kind's roles."""

    def read(spec: Mapping[str, Any]) -> list[Item]:
        return read_items(kind, _rows(spec), {**fields, **(hub_fields or {})} if spec.get("hub") else fields)

    return TaskReader(read, kind)


def pubmedqa(spec: Mapping[str, Any]) -> list[Item]:
    """PQA-L test questions: the ids of `split` (id -> yes/no/maybe) taken in the order of `path`
    (id -> {QUESTION, CONTEXTS, ...}); the split file itself is sorted by answer, so its order
    would make every small subset all-"yes". A hub set (pubid, question, context.contexts,
    final_decision) is restricted to the split's ids when a split file is given."""
    if spec.get("hub"):
        answers = pubmedqa_answers(Path(spec["split"])) if spec.get("split") else None
        rows = [Record({**row, "contexts": row["context"]["contexts"]}, row.where)
                for row in hub_records(spec["hub"]) if answers is None or str(row["pubid"]) in answers]
        return read_items("yesno", rows, PUBMEDQA_HUB_FIELDS)
    path, split = Path(spec["path"]), Path(spec["split"])
    answers, entries = pubmedqa_answers(split), pubmedqa_items(path)
    missing = [pid for pid in answers if pid not in entries]
    if missing:
        raise ConfigError(f"{path} lacks {len(missing)} ids of {split} (e.g. {missing[0]})")
    rows = [Record({**entry, "pid": pid, "answer": answers[pid]}, entry.where)
            for pid, entry in entries.items() if pid in answers]
    return read_items("yesno", rows, PUBMEDQA_FIELDS)


def rqe(spec: Mapping[str, Any]) -> list[Item]:
    """MEDIQA 2019 RQE pairs: the consumer question, the FAQ, and whether it entails (label 0: true)."""
    return [{"id": pair.pid, "chq": pair.chq, "faq": pair.faq, "label": 0 if pair.entails else 1}
            for pair in rqe_pairs(Path(spec["path"]))]


def read_user_task(source: Mapping[str, Any]) -> list[Item]:
    """Docs of a resolved user task (evals/tasks/user_tasks.py) from its JSON-lines file."""
    return read_items(source["kind"], read_jsonl(Path(source["path"])), source["fields"], source["labels"])


TASK_READERS: dict[str, TaskReader] = {  # metadata.format of a task YAML -> its reader
    "pubmedqa": TaskReader(pubmedqa, "yesno", ("path", "split")),
    "rqe": TaskReader(rqe, None),
    "mednli": _layout("nli", MEDNLI_FIELDS),  # the user's own copy (mli_test_v1.jsonl)
    "meqsum": _layout("summary", MEQSUM_FIELDS),  # consumer question (CHQ) -> reference summary
    "casehold": _layout("choice", CASEHOLD_FIELDS),  # a citing text with a <HOLDING> slot, five holdings
    "billsum": _layout("summary", BILLSUM_FIELDS, {"source": "text"}),  # the hub set names the bill `text`
}
