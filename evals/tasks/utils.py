"""lm-eval hooks named by the task YAMLs: the dataset of each declared task (`utils.<task>_docs`)
built from the injected source specs, and `process_results` for the choice and summarization
tasks. lm-eval imports this file by path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import datasets

from evals.metrics import macro_f1, rouge
from evals.tasks.declarations import read_task, task_declarations


def task_docs(task: str) -> Callable[..., datasets.DatasetDict]:
    """The dataset hook of `task`: its docs from the source spec that evals.lm_tasks injects as
    task metadata (paths are decided at run time, never in the YAML)."""

    def hook(sources: Mapping[str, Any] | None = None, **_: Any) -> datasets.DatasetDict:
        if not sources or task not in sources:
            raise ValueError(f"task {task!r} needs metadata sources.{task} (path or hub); run it through "
                             "evals.lm_tasks or pass --metadata to lm_eval")
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_task(task, sources[task]))})

    return hook


def __getattr__(attr: str) -> Callable[..., datasets.DatasetDict]:
    """`<task>_docs`, the dataset hook a task YAML names, for every declared task."""
    task = attr.removesuffix("_docs")
    if task != attr and task in task_declarations():
        return task_docs(task)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _choice_result(gold: int, scores: list[float]) -> dict[str, Any]:
    pred = max(range(len(scores)), key=scores.__getitem__)
    return {"acc": float(pred == gold), "macro_f1": (gold, pred)}


def process_choice(doc: Mapping[str, Any], results: list[tuple[float, bool]]) -> dict[str, Any]:
    """Argmax of the summed log-likelihood of each candidate (single-word labels)."""
    return _choice_result(doc["label"], [ll for ll, _ in results])


def process_choice_per_token(doc: Mapping[str, Any], results: list[tuple[float, bool]]) -> dict[str, Any]:
    """Argmax of the mean per-token log-likelihood (long candidates of unequal length, as the
    D-Pruner paper scores CaseHOLD); `choice_tokens` is added by evals.lm_tasks with the model's
    tokenizer, since lm-eval's own acc_norm divides by characters."""
    if "choice_tokens" not in doc:
        raise ValueError("per-token scoring needs doc['choice_tokens']; run the task through evals.lm_tasks")
    scores = [ll / n for (ll, _), n in zip(results, doc["choice_tokens"], strict=True)]
    return _choice_result(doc["label"], scores)


def aggregate_macro_f1(items: list[tuple[int, int]]) -> float:
    golds, preds = zip(*items, strict=True)
    return macro_f1(golds, preds)


def first_line(text: str) -> str:
    """The generated summary: leading whitespace dropped, cut at the first newline."""
    return text.strip().split("\n", 1)[0].strip()


def process_summary(doc: Mapping[str, Any], results: list[str]) -> dict[str, float]:
    return rouge(first_line(results[0]), doc["summary"])
