"""Task kinds: the shape of a doc for each kind of task, and the one reader that builds docs of a
kind from rows and a field mapping. Built-in tasks are kinds with a fixed mapping (readers.py);
a user's own task names its kind, its JSON-lines file, the mapping and, where its label values
differ from the kind's, a label mapping (domain.tasks.<name>), and runs with the prompt and
metrics of the built-in task it is `like`.

    kind     roles (fields)                    labels                             like
    nli      premise, hypothesis, label        entailment / contradiction / neutral  mednli
    yesno    question, context, label          yes / no / maybe                   pubmedqa
    choice   prompt, choices, label            a choice index 0..n-1              casehold
    summary  source, summary                   -                                  billsum, hqs

Every mapping may also name an `id` field (default: the item's position)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.checks import as_int, choice
from core.data import data_path, read_jsonl, read_text
from core.errors import ConfigError

Doc = dict[str, Any]
Where = Callable[[], str]  # names the item being read, computed only for an error message

NLI_LABELS = ("entailment", "contradiction", "neutral")
YESNO_LABELS = ("yes", "no", "maybe")
SPEC_KEYS = ("kind", "path", "fields", "labels", "like")


@dataclass(frozen=True)
class Rows:
    """Items of one source, and how an error names one of them: a JSON-lines file by its line,
    any other source by the item's id."""

    origin: str
    items: list[dict[str, Any]]
    lines: bool = False

    def where(self, index: int, item_id: str) -> str:
        if self.lines:
            return f"{self.origin}:{_line_of(Path(self.origin), index)}"
        return f"{self.origin}, item {item_id}"


def _line_of(path: Path, index: int) -> int:
    """Line number of the index-th item of a JSON-lines file (blank lines hold none, as in read_jsonl)."""
    return [n for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()][index]


def norm(value: Any) -> str:
    """A label as compared: text, trimmed, lower case (a YAML or JSON `true` is "true")."""
    return str(value).strip().lower()


def _text(row: Mapping[str, Any], field: str, where: Where) -> str:
    value = row[field]
    if not isinstance(value, str):
        raise ConfigError(f"{where()}: field {field!r} holds {type(value).__name__} {str(value)[:40]!r}; "
                          "expected text")
    return value


def _passage(row: Mapping[str, Any], field: str, where: Where) -> str:
    """Text, or a list of texts joined by spaces (PubMedQA's CONTEXTS)."""
    value = row[field]
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return " ".join(value)
    return _text(row, field, where)


def _mapped(value: Any, labels: Mapping[str, Any] | None, where: Where) -> Any:
    """The canonical label of a file's label value, through the task's `labels` when it has one."""
    if labels is None:
        return norm(value)
    if norm(value) not in labels:
        raise ConfigError(f"{where()} has label {value!r}; labels maps only {list(labels)}")
    return labels[norm(value)]


def _class_label(value: Any, classes: tuple[str, ...], labels: Mapping[str, Any] | None, where: Where) -> int:
    label = _mapped(value, labels, where)
    if label not in classes:
        raise ConfigError(f"{where()} has label {value!r}; expected one of {list(classes)}")
    return classes.index(label)


def _choice_index(value: Any, count: int, labels: Mapping[str, Any] | None, where: Where) -> int:
    label = str(_mapped(value, labels, where))
    if not (label.isascii() and label.isdigit() and int(label) < count):
        raise ConfigError(f"{where()} has label {value!r}; expected a choice index 0..{count - 1}")
    return int(label)


def _nli(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Mapping[str, Any] | None,
         where: Where) -> Doc:
    return {"premise": _text(row, fields["premise"], where),
            "hypothesis": _text(row, fields["hypothesis"], where),
            "label": _class_label(row[fields["label"]], NLI_LABELS, labels, where)}


def _yesno(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Mapping[str, Any] | None,
           where: Where) -> Doc:
    return {"question": _text(row, fields["question"], where),
            "context": _passage(row, fields["context"], where),
            "label": _class_label(row[fields["label"]], YESNO_LABELS, labels, where)}


def _choice(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Mapping[str, Any] | None,
            where: Where) -> Doc:
    names = fields["choices"]
    choices = row[names] if isinstance(names, str) else [row[name] for name in names]
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
        raise ConfigError(f"{where()}: the choices {names!r} hold {str(choices)[:60]!r}; expected at least "
                          "two texts")
    return {"prompt": _text(row, fields["prompt"], where), "choices": choices,
            "label": _choice_index(row[fields["label"]], len(choices), labels, where)}


def _summary(row: Mapping[str, Any], fields: Mapping[str, Any], labels: Mapping[str, Any] | None,
             where: Where) -> Doc:
    return {"source": _text(row, fields["source"], where).strip(),
            "summary": _text(row, fields["summary"], where).strip()}


@dataclass(frozen=True)
class Kind:
    """What a task of this kind needs from its file and which built-in prompts it can run with."""

    roles: tuple[str, ...]  # what the field mapping must name (besides an optional `id`)
    classes: tuple[str, ...] | None  # canonical labels; None: none, or a choice index
    like: tuple[str, ...]  # built-in tasks whose prompt and metrics it can take (first: the default)
    doc: Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any] | None, Where], Doc]


KINDS = {
    "nli": Kind(("premise", "hypothesis", "label"), NLI_LABELS, ("mednli",), _nli),
    "yesno": Kind(("question", "context", "label"), YESNO_LABELS, ("pubmedqa",), _yesno),
    "choice": Kind(("prompt", "choices", "label"), None, ("casehold",), _choice),
    "summary": Kind(("source", "summary"), None, ("billsum", "hqs"), _summary),
}


def _file_fields(fields: Mapping[str, Any]) -> list[str]:
    """The file's field names a mapping needs in every row (the id field is optional)."""
    names = [name for role, name in fields.items() if role != "id"]
    return [n for name in names for n in ([name] if isinstance(name, str) else name)]


def kind_docs(kind: str, rows: Rows, fields: Mapping[str, Any],
              labels: Mapping[str, Any] | None = None) -> list[Doc]:
    """Docs of one kind from `rows`, reading each role from its mapped field."""
    need = _file_fields(fields)
    docs = []
    for index, row in enumerate(rows.items):
        item_id = str(row.get(fields["id"], index)) if fields.get("id") else str(index)

        def where(index: int = index, item_id: str = item_id) -> str:
            return rows.where(index, item_id)

        missing = [name for name in need if name not in row]
        if missing:
            raise ConfigError(f"{where()} lacks field(s) {missing}; expected {need}")
        docs.append({"id": item_id, **KINDS[kind].doc(row, fields, labels, where)})
    return docs


def _field_name(where: str, role: str, name: Any) -> str | list[str]:
    """One field name; for `choices` also a list of at least two (one field per choice)."""
    if isinstance(name, str) and name:
        return name
    names = list(name) if role == "choices" and isinstance(name, Sequence) else []
    if len(names) >= 2 and all(isinstance(n, str) and n for n in names):
        return names
    wanted = "a field holding a list, or at least two fields" if role == "choices" else "one field"
    raise ConfigError(f"{where}.fields.{role}={name!r} must name {wanted}")


def _fields(where: str, kind: str, fields: Any) -> dict[str, Any]:
    roles = KINDS[kind].roles
    example = ", ".join(f"{role}: <your field>" for role in roles)
    if not isinstance(fields, Mapping):
        raise ConfigError(f"{where}.fields={fields!r}; a {kind} task maps {list(roles)} onto the file's "
                          f"field names, e.g. fields: {{{example}}}")
    missing = [role for role in roles if fields.get(role) is None]
    unknown = sorted(set(map(str, fields)) - {*roles, "id"})
    if missing or unknown:
        bad = f"lacks {missing}" if missing else f"has unknown role(s) {unknown}"
        raise ConfigError(f"{where}.fields {bad}; a {kind} task maps {list(roles)} (and optionally id), "
                          f"e.g. fields: {{{example}}}")
    return {str(role): _field_name(where, str(role), name) for role, name in fields.items()}


def _labels(where: str, kind: str, labels: Any) -> dict[str, Any] | None:
    """`labels` with its keys as compared; each value one of the kind's labels (choice: an index)."""
    if labels is None:
        return None
    classes = KINDS[kind].classes
    if kind == "summary" or not isinstance(labels, Mapping):
        raise ConfigError(f"{where}.labels={labels!r}; " + (
            "a summary task has no labels" if kind == "summary" else "map each label value of the file "
            f"onto {list(classes) if classes else 'a choice index'}, e.g. labels: {{yes: 0, no: 1}}"))
    if classes is None:
        return {norm(key): as_int(f"{where}.labels.{key}", value, 0) for key, value in labels.items()}
    return {norm(key): choice(f"{where}.labels.{key}", norm(value), classes) for key, value in labels.items()}


def user_source(name: str, spec: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """A user task's spec (domain.tasks.<name>) checked and resolved: kind, absolute path, field and
    label mappings, and the built-in task whose prompt and metrics it takes."""
    where = f"domain.tasks.{name}"
    unknown = sorted(set(map(str, spec)) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; a task of your own takes {list(SPEC_KEYS)}")
    kind = choice(f"{where}.kind", spec["kind"], sorted(KINDS))
    if not spec.get("path"):
        raise ConfigError(f"{where} has no path; give its JSON-lines file, e.g. "
                          f"{where}.path=/data/{name}.jsonl")
    like = choice(f"{where}.like", spec.get("like") or KINDS[kind].like[0], KINDS[kind].like)
    return {"kind": kind, "path": str(data_path(root, str(spec["path"]))),
            "fields": _fields(where, kind, spec.get("fields")),
            "labels": _labels(where, kind, spec.get("labels")), "like": like}


def read_user_task(source: Mapping[str, Any]) -> list[Doc]:
    """Docs of a resolved user task (user_source) from its JSON-lines file."""
    path = Path(source["path"])
    return kind_docs(source["kind"], Rows(str(path), read_jsonl(path), lines=True), source["fields"],
                     source["labels"])
