"""The domain tasks (QA, NLI, summarization) through lm-eval, on the in-memory model.

Tasks are the YAMLs in evals/tasks, each declaring itself (evals/tasks/declarations.py); their
data paths are decided at run time (the domain config, resolved against the data root) and reach
the YAMLs' dataset hooks as lm-eval task metadata. Each task runs on its own so that it gets its
own item limit, generation length and wall time. A user's own task (one with a `kind`,
evals/tasks/user_tasks.py) runs as the YAML of the declared task it is like, under its own name
and with its own docs: same prompt, choices, metrics and version.
The model runs inside lm-eval as evals/prefix_lm.PrefixSharingLM."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lm_eval.evaluator import evaluate
from lm_eval.tasks import TaskManager
from transformers import PreTrainedModel

from core.checks import as_int
from core.data import data_path
from core.errors import ConfigError
from core.items import TASK_KINDS
from evals.prefix_lm import PrefixSharingLM
from evals.tasks.declarations import TASKS_DIR, read_task, task_declarations
from evals.tasks.user_tasks import user_source
from evals.tasks.utils import first_line, task_docs

log = logging.getLogger(__name__)


@dataclass
class TaskResults:
    metrics: dict[str, float] = field(default_factory=dict)  # `<domain>/<task>/<metric>`
    samples: dict[str, list[dict]] = field(default_factory=dict)  # generation tasks: outputs + references
    seconds: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int | None] = field(default_factory=dict)  # the preset's limit (None = all items)
    versions: dict[str, Any] = field(default_factory=dict)  # task YAML versions (prompt changes)
    kinds: dict[str, dict[str, str]] = field(default_factory=dict)  # user tasks: kind and template
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-item scores, by task


@dataclass(frozen=True)
class TaskSettings:
    """The eval preset's `tasks` block, typed: generation batch, item limits, generation lengths."""

    batch_size: int
    limit: dict[str, int | None]
    max_new_tokens: dict[str, int]

    def of(self, name: str, source: Mapping[str, Any]) -> tuple[int | None, int | None]:
        """Limit and max_new_tokens of a task; a user task without its own entries takes those of
        the declared task it is like (so a preset bounds it as it bounds that task)."""
        like = source.get("like", name)
        limit = self.limit[name] if name in self.limit else self.limit.get(like)
        return limit, self.max_new_tokens.get(name, self.max_new_tokens.get(like))


def _per_task(cfg: Mapping[str, Any], key: str, known: list[str]) -> dict[str, Any]:
    table = cfg.get(key) or {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"eval.tasks.{key}={table!r}; expected task name -> number")
    unknown = sorted(set(map(str, table)) - set(known))
    if unknown:
        raise ConfigError(f"eval.tasks.{key}.{unknown[0]}: no such task; known: {known}")
    return {str(name): value for name, value in table.items()}


def task_settings(cfg: Mapping[str, Any], tasks: Iterable[str] = ()) -> TaskSettings:
    """Typed `eval.tasks`: batch_size >= 1, each limit null or >= 1, each max_new_tokens >= 1, and
    only names of declared tasks or of `tasks` (the domain's) as keys, so a typo fails in one line."""
    known = sorted({*task_declarations(), *map(str, tasks)})
    limits = _per_task(cfg, "limit", known)
    new_tokens = _per_task(cfg, "max_new_tokens", known)
    return TaskSettings(
        batch_size=as_int("eval.tasks.batch_size", cfg.get("batch_size", 1), 1),
        limit={name: None if value is None else as_int(f"eval.tasks.limit.{name}", value, 1)
               for name, value in limits.items()},
        max_new_tokens={name: as_int(f"eval.tasks.max_new_tokens.{name}", value, 1)
                        for name, value in new_tokens.items()})


def task_sources(tasks_cfg: Mapping[str, Any], data_root: Path) -> dict[str, dict[str, Any]]:
    """The tasks to run, each with absolute paths (or its hub spec). A task whose `path` is null
    and has no `hub` (MedNLI unless the user gives their copy) is skipped. A task with a `kind`
    is the user's own (evals/tasks/user_tasks.py) and may not take a declared task's name."""
    declared, sources = task_declarations(), {}
    for name, spec in (tasks_cfg or {}).items():
        if not isinstance(spec, Mapping | None):
            raise ConfigError(f"domain.tasks.{name}={spec!r} is not a task spec; give {{path: ...}} or "
                              "{kind: ..., path: ..., fields: {...}} (docs/evaluation.md, 'Your own tasks')")
        spec = dict(spec or {})
        if "kind" in spec:
            if name in declared:
                raise ConfigError(f"domain.tasks.{name} has a kind, but {name!r} is a built-in task; give "
                                  f"your task its own name (built-in: {sorted(declared)})")
            sources[name] = user_source(name, spec, data_root)
            continue
        if name not in declared:
            raise ConfigError(f"unknown task {name!r} under domain.tasks; known: {sorted(declared)}, or a "
                              f"task of your own with kind: {'|'.join(TASK_KINDS)} "
                              "(docs/evaluation.md, 'Your own tasks')")
        keys = declared[name].reader.file_keys
        if spec.get("hub"):  # a hub set, optionally restricted by a local id file (PubMedQA's split)
            sources[name] = {"hub": dict(spec["hub"])}
            keys = tuple(key for key in keys if key != "path" and spec.get(key))
        elif not spec.get("path"):
            continue
        else:
            sources[name] = {}
        sources[name].update({key: str(data_path(data_root, str(spec[key]))) for key in keys})
    return sources


def check_tasks(tasks_cfg: Mapping[str, Any], data_root: Path) -> list[Path]:
    """Read every local task file once with the run's reader, before any model loads: a missing,
    unreadable, malformed or empty file raises ConfigError naming the file and what it should
    hold; a hub set is loaded too (offline and not cached: one line naming its id). Returns the
    local files the tasks use (for the run's fingerprint)."""
    files = []
    for name, spec in task_sources(tasks_cfg, data_root).items():
        read_task(name, spec)
        files += [Path(spec[key]) for key in ("path", "split") if spec.get(key)]
    return files


class _TaskYaml(yaml.SafeLoader):
    """Reads a task YAML as lm-eval does: `!function utils.<name>` is that hook of evals.tasks."""


def _function(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    module, name = loader.construct_scalar(node).rsplit(".", 1)
    return getattr(importlib.import_module(f"evals.tasks.{module}"), name)


_TaskYaml.add_constructor("!function", _function)


def lm_eval_spec(name: str, source: Mapping[str, Any]) -> str | dict[str, Any]:
    """What lm-eval loads for a task: a declared one by its YAML's name; a user task as the YAML of
    the declared task it is like (prompt, choices, metrics, version) under its own name and docs."""
    if "kind" not in source:
        return f"dpb_{name}"
    config = yaml.load(task_declarations()[source["like"]].path.read_text(encoding="utf-8"), Loader=_TaskYaml)
    return {**config, "task": f"dpb_{name}", "custom_dataset": task_docs(name)}


def _add_choice_tokens(task: Any, lm: PrefixSharingLM, limit: int | None) -> None:
    """Annotate the docs to be evaluated (the first `limit`) with their candidates' token counts,
    for mean per-token scoring."""
    split, delimiter = task.config.test_split, task.config.target_delimiter
    docs = task.dataset[split]
    docs = docs.select(range(min(limit, len(docs)))) if limit else docs
    counts = [[lm.continuation_tokens(task.doc_to_text(doc), delimiter + choice)
               for choice in task.doc_to_choice(doc)] for doc in docs]
    task.dataset[split] = docs.add_column("choice_tokens", counts)


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval warns on every in-memory model and custom dataset, which is how we use it."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _samples(logged: list[dict[str, Any]], metric_names: list[str]) -> list[dict[str, Any]]:
    """Generated text beside its reference, per item."""
    return [{"id": s["doc"]["id"], "prediction": first_line(s["filtered_resps"][0]), "reference": s["target"],
             **{m: s[m] for m in metric_names if m in s}} for s in logged]


def _evidence(logged: list[dict[str, Any]], metric_names: list[str], generates: bool) -> dict[str, Any]:
    """Per item, in item order: the predicted and gold choice (choice tasks) or the ROUGE scores
    (generation), so that intervals and paired comparisons need no rerun."""
    logged = sorted(logged, key=lambda s: s["doc_id"])
    ids = [str(s["doc"]["id"]) for s in logged]
    if generates:
        return {"kind": "generation", "ids": ids,
                **{m: [float(s[m]) for s in logged] for m in metric_names}}
    gold, pred = zip(*(s["macro_f1"] for s in logged), strict=True) if logged else ((), ())
    choices = [len(s["arguments"]) for s in logged]  # items may differ: chance is per item
    return {"kind": "choice", "ids": ids, "gold": [int(g) for g in gold], "pred": [int(p) for p in pred],
            "item_choices": choices, "n_choices": max(choices, default=0)}


def _run_task(name: str, source: Mapping[str, Any], key: str, lm: PrefixSharingLM, manager: TaskManager,
              settings: TaskSettings, result: TaskResults) -> None:
    """Evaluate one task on its first `limit` docs; add its numbers and samples to `result`."""
    limit, max_new_tokens = settings.of(name, source)
    lm_name = f"dpb_{name}"
    loaded = manager.load([lm_eval_spec(name, source)])
    task = loaded["tasks"][lm_name]
    generates = task.get_config("output_type") == "generate_until"
    if generates and max_new_tokens:
        task.set_config("generation_kwargs", {"max_gen_toks": max_new_tokens}, update=True)
    if (task.get_config("metadata") or {}).get("choice_tokens"):
        _add_choice_tokens(task, lm, limit)
    began = time.perf_counter()
    out = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=True)
    result.seconds[key] = time.perf_counter() - began
    result.items[key] = int(out["n-samples"][lm_name]["effective"])
    result.limits[key] = limit
    result.versions[key] = out["versions"][lm_name]
    if "kind" in source:
        result.kinds[key] = {"kind": source["kind"], "like": source["like"]}
    names = list(task.aggregation())
    for metric in names:
        result.metrics[f"{key}/{metric}"] = float(out["results"][lm_name][f"{metric},none"])
    if generates:
        result.samples[key] = _samples(out["samples"][lm_name], names)
    result.evidence[key] = _evidence(out["samples"][lm_name], names, generates)
    log.info("%s: %d items in %.1f s", key, result.items[key], result.seconds[key])


def evaluate_domain_tasks(model: PreTrainedModel, tokenizer: Any, tasks_cfg: Mapping[str, Any],
                          limits_cfg: Mapping[str, Any], data_root: Path, batch_size: int | None = None,
                          *, domain: str | None = None, share_prompts: bool = True) -> TaskResults:
    """Run every configured task of a domain (`domain.tasks`) under the eval preset's `tasks`
    block (`limit` and `max_new_tokens` per task, `batch_size` for generation and, without
    prompt sharing, for lm-eval's log-likelihood batches). Metrics are keyed by `domain` (the
    domain's name; declared tasks default to their own domain, user tasks need it)."""
    sources = task_sources(tasks_cfg, data_root)
    settings = task_settings(limits_cfg, tasks_cfg or {})
    result = TaskResults()
    with _quiet_lm_eval():
        lm = PrefixSharingLM(pretrained=model, tokenizer=tokenizer, backend="causal",
                             batch_size=int(batch_size or settings.batch_size), share_prompts=share_prompts)
        manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                              metadata={"sources": sources})
        for name, source in sources.items():
            if domain is None and "kind" in source:
                raise ValueError(f"user task {name!r}: evaluate_domain_tasks needs the domain's name")
            key = f"{domain or task_declarations()[name].domain}/{name}"
            _run_task(name, source, key, lm, manager, settings, result)
    return result
