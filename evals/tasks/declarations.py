"""The declared tasks: one YAML per task in this folder, named after the task (rqe.yaml is task
`rqe`, which lm-eval knows as `dpb_rqe`, with the dataset hook `utils.rqe_docs`). Besides
lm-eval's own keys, its `metadata` says what the project needs to know of it:

    metadata:
      version: 1.0          # lm-eval's task version (lands in the record)
      domain: legal         # its metrics are <domain>/<task>/<metric> when the run names no domain
      format: casehold      # the reader of its files (evals/tasks/readers.py), which fixes its kind
      like_default: true    # a user task of its kind runs like this one unless it names another

Everything else derives from these: the task list, the file keys of a source spec, the user
task templates of each kind, the known names of the eval presets' per-task limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from core.checks import as_bool, choice
from core.errors import ConfigError
from core.items import Item
from evals.tasks.readers import TASK_READERS, TaskReader, read_user_task

TASKS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TaskDeclaration:
    name: str
    path: Path  # its YAML (what lm-eval loads; a user task runs as the YAML it is like)
    domain: str
    format: str
    like_default: bool

    @property
    def reader(self) -> TaskReader:
        return TASK_READERS[self.format]

    @property
    def kind(self) -> str | None:
        return self.reader.kind


class _Declaration(yaml.SafeLoader):
    """Reads a task YAML without importing its hooks (`!function utils.x` is the text utils.x)."""


_Declaration.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _declaration(path: Path) -> TaskDeclaration:
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Declaration) or {}
    name, meta = path.stem, config.get("metadata") or {}
    hook = f"utils.{name}_docs"
    if config.get("task") != f"dpb_{name}" or config.get("custom_dataset") != hook:
        raise ConfigError(f"{path}: a task YAML is named after its task: task: dpb_{name} and "
                          f"custom_dataset: !function {hook}")
    if not isinstance(meta.get("domain"), str) or not meta["domain"]:
        raise ConfigError(f"{path}: metadata.domain={meta.get('domain')!r}; name the task's domain")
    file_format = choice(f"{path}: metadata.format", meta.get("format"), sorted(TASK_READERS))
    like_default = as_bool(f"{path}: metadata.like_default", meta.get("like_default", False))
    return TaskDeclaration(name, path, meta["domain"], file_format, like_default)


@cache
def task_declarations() -> dict[str, TaskDeclaration]:
    """Every task YAML of this folder, checked; each kind that has tasks has one default template."""
    declared = {path.stem: _declaration(path) for path in sorted(TASKS_DIR.glob("*.yaml"))}
    for kind in {task.kind for task in declared.values()} - {None}:
        defaults = [task.name for task in declared.values() if task.kind == kind and task.like_default]
        if len(defaults) != 1:
            raise ConfigError(f"the {kind} tasks in {TASKS_DIR} mark {defaults or 'none'} "
                              "like_default: true; mark exactly one (a user task's default template)")
    return declared


def templates(kind: str) -> list[str]:
    """The declared tasks a user task of `kind` can run like, the default first."""
    found = [task for task in task_declarations().values() if task.kind == kind]
    return [task.name for task in sorted(found, key=lambda task: not task.like_default)]


def read_task(name: str, spec: Mapping[str, Any]) -> list[Item]:
    """Docs of task `name` with the reader the run uses; a source with no items is an error (it
    would score nothing and report nothing)."""
    docs = read_user_task(spec) if spec.get("kind") else task_declarations()[name].reader.read(spec)
    if not docs:
        origin = spec.get("split") or spec.get("path") or f"hub dataset {spec['hub']['id']}"
        raise ConfigError(f"{origin} has no items (task {name}); a task needs at least one")
    return docs
