"""Items of the four task kinds, read from rows through a field mapping (role -> the row's field),
and the field layouts of the shipped datasets. A dataset's rows are read by one layout whether
they calibrate (core/domain_texts.py) or are evaluated (evals/tasks/readers.py); a user's own
task gives its own mapping (evals/tasks/user_tasks.py).

    kind     roles (fields)                    labels
    nli      premise, hypothesis, label        entailment / contradiction / neutral
    yesno    question, context, label          yes / no / maybe
    choice   prompt, choices, label            a choice index 0..n-1
    summary  source, summary                   -

Every mapping may also name an `id` field (default: the item's position)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from core.formats import choices, passage, reference, text, where_of

Item = dict[str, Any]
Labels = Mapping[str, Any] | None  # a task's own label values -> the kind's labels (None: as they are)

NLI_LABELS = ("entailment", "contradiction", "neutral")
YESNO_LABELS = ("yes", "no", "maybe")

MEDNLI_FIELDS = {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label", "id": "pairID"}
MEQSUM_FIELDS = {"source": "CHQ", "summary": "Summary", "id": "q_id"}  # also MEDIQA 2021 (HQS)
CASEHOLD_FIELDS = {"prompt": "citing_prompt", "choices": [f"holding_{k}" for k in range(5)], "label": "label",
                   "id": "example_id"}
BILLSUM_FIELDS = {"source": "source", "summary": "summary"}


def norm(value: Any) -> str:
    """A label as compared: text, trimmed, lower case (a YAML or JSON `true` is "true")."""
    return str(value).strip().lower()


def _mapped(row: Mapping[str, Any], value: Any, labels: Labels) -> Any:
    """The canonical label of a file's label value, through the task's `labels` when it has one."""
    if labels is None:
        return norm(value)
    if norm(value) not in labels:
        raise ConfigError(f"{where_of(row)} has label {value!r}; labels maps only {list(labels)}")
    return labels[norm(value)]


def _class_label(row: Mapping[str, Any], field: str, classes: tuple[str, ...], labels: Labels) -> int:
    label = _mapped(row, row[field], labels)
    if label not in classes:
        raise ConfigError(f"{where_of(row)} has label {row[field]!r}; expected one of {list(classes)}")
    return classes.index(label)


def _choice_index(row: Mapping[str, Any], field: str, count: int, labels: Labels) -> int:
    label = str(_mapped(row, row[field], labels))
    if not (label.isascii() and label.isdigit() and int(label) < count):
        raise ConfigError(f"{where_of(row)} has label {row[field]!r}; expected a choice index 0..{count - 1}")
    return int(label)


def _nli(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Labels) -> Item:
    return {"premise": text(row, fields["premise"]), "hypothesis": text(row, fields["hypothesis"]),
            "label": _class_label(row, fields["label"], NLI_LABELS, labels)}


def _yesno(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Labels) -> Item:
    return {"question": text(row, fields["question"]), "context": passage(row, fields["context"]),
            "label": _class_label(row, fields["label"], YESNO_LABELS, labels)}


def _choice(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Labels) -> Item:
    options = choices(row, fields["choices"])
    return {"prompt": text(row, fields["prompt"]), "choices": options,
            "label": _choice_index(row, fields["label"], len(options), labels)}


def _summary(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Labels) -> Item:
    return {"source": text(row, fields["source"]).strip(), "summary": reference(row, fields["summary"])}


@dataclass(frozen=True)
class Kind:
    """What an item of this kind needs from its row, and how it is read."""

    roles: tuple[str, ...]  # what the field mapping must name (besides an optional `id`)
    classes: tuple[str, ...] | None  # canonical labels; None: none, or a choice index
    read: Callable[[Mapping[str, Any], Mapping[str, Any], Labels], Item]


TASK_KINDS = {
    "nli": Kind(("premise", "hypothesis", "label"), NLI_LABELS, _nli),
    "yesno": Kind(("question", "context", "label"), YESNO_LABELS, _yesno),
    "choice": Kind(("prompt", "choices", "label"), None, _choice),
    "summary": Kind(("source", "summary"), None, _summary),
}


def item(kind: str, row: Mapping[str, Any], fields: Mapping[str, Any], labels: Labels = None) -> Item:
    """One row read as an item of `kind` (without an id); every mapped field but the id must be
    there."""
    names = [name for role, name in fields.items() if role != "id"]
    need = [n for name in names for n in ([name] if isinstance(name, str) else name)]
    missing = [name for name in need if name not in row]
    if missing:
        raise ConfigError(f"{where_of(row)} lacks field(s) {missing}; expected {need}")
    return TASK_KINDS[kind].read(row, fields, labels)


def read_items(kind: str, rows: Sequence[Mapping[str, Any]], fields: Mapping[str, Any],
               labels: Labels = None) -> list[Item]:
    """Items of one kind from `rows`, each with its id (the `id` field, else its position)."""
    return [{"id": str(row.get(fields["id"], index)) if fields.get("id") else str(index),
             **item(kind, row, fields, labels)} for index, row in enumerate(rows)]
