"""A user's own task (domain.tasks.<name>): a JSON-lines file of one kind (core/items.py: nli,
yesno, choice, summary), a mapping of the kind's roles onto the file's fields and, where its label
values differ from the kind's, a label mapping. It runs with the prompt and metrics of a declared
task of its kind that it is `like` (evals/tasks/declarations.py; the kind's default template
unless it names another), under its own name and with its own docs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.checks import as_int, choice
from core.data import data_path
from core.errors import ConfigError
from core.items import TASK_KINDS, norm
from evals.tasks.declarations import templates

SPEC_KEYS = ("kind", "path", "fields", "labels", "like")


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
    roles = TASK_KINDS[kind].roles
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
    classes = TASK_KINDS[kind].classes
    if kind == "summary" or not isinstance(labels, Mapping):
        raise ConfigError(f"{where}.labels={labels!r}; " + (
            "a summary task has no labels" if kind == "summary" else "map each label value of the file "
            f"onto {list(classes) if classes else 'a choice index'}, e.g. labels: {{yes: 0, no: 1}}"))
    if classes is None:
        return {norm(key): as_int(f"{where}.labels.{key}", value, 0) for key, value in labels.items()}
    return {norm(key): choice(f"{where}.labels.{key}", norm(value), classes) for key, value in labels.items()}


def user_source(name: str, spec: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """A user task's spec (domain.tasks.<name>) checked and resolved: kind, absolute path, field and
    label mappings, and the declared task whose prompt and metrics it takes."""
    where = f"domain.tasks.{name}"
    unknown = sorted(set(map(str, spec)) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; a task of your own takes {list(SPEC_KEYS)}")
    kind = choice(f"{where}.kind", spec["kind"], sorted(TASK_KINDS))
    if not spec.get("path"):
        raise ConfigError(f"{where} has no path; give its JSON-lines file, e.g. "
                          f"{where}.path=/data/{name}.jsonl")
    like = choice(f"{where}.like", spec.get("like") or templates(kind)[0], templates(kind))
    return {"kind": kind, "path": str(data_path(root, str(spec["path"]))),
            "fields": _fields(where, kind, spec.get("fields")),
            "labels": _labels(where, kind, spec.get("labels")), "like": like}
