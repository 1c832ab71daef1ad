"""Everything a cell evaluates after pruning: domain and general perplexity and the domain's
lm-eval tasks, as one flat metrics dict keyed `<domain|general>/<task>/<metric>`.

run.py calls check_eval_settings and check_eval_inputs before the model loads; they read the
settings and every file with the same functions the evaluation uses, so whatever would fail
after pruning fails first, in one line."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from core.data import data_path, load_texts
from core.errors import ConfigError
from core.evaluated import EvaluatedTexts, long_texts
from evals.lm_tasks import check_tasks, evaluate_domain_tasks, task_settings, task_sources
from evals.perplexity import check_scored, perplexity_settings, perplexity_sources, strided_perplexity
from evals.tasks.declarations import read_task


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # per task: windows, items, seconds...
    samples: dict[str, list[dict]] = field(default_factory=dict)
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)  # per window / per item, by source
    seconds: float = 0.0


def check_eval_settings(eval_cfg: Mapping[str, Any], context: int | None,
                        domain: Mapping[str, Any] | None = None) -> None:
    """Every `eval` setting typed and in range before the model loads (`context`: the model's
    max positions, None when unknown). Per-task keys must name declared tasks or, given the
    `domain` config, its tasks (a user task's limit lives under its own name)."""
    perplexity_settings(eval_cfg.get("perplexity") or {}, context)
    task_settings(eval_cfg.get("tasks") or {}, ((domain or {}).get("tasks") or {}).keys())


def check_eval_inputs(domain: Mapping[str, Any], general: Mapping[str, Any], root: Path,
                      tokenizer: Any = None) -> list[Path]:
    """Read every local evaluation file with the run's reader (raises ConfigError naming a missing,
    unreadable, malformed or empty one, or a hub set that cannot be loaded; given the model's
    `tokenizer`, a perplexity text that scores no token); returns the local files read, for the
    caller's fingerprint."""
    check_metric_names(domain, general)
    files = []
    for key, spec in perplexity_sources(domain, general).items():
        texts = load_texts(spec, root, key)
        if tokenizer is not None:
            check_scored(tokenizer, texts, f"{key} ({spec['path']})" if spec.get("path") else key)
        if not spec.get("hub"):
            files.append(data_path(root, spec["path"]))
    return files + check_tasks(domain.get("tasks") or {}, root)


def evaluated_texts(domain: Mapping[str, Any], root: Path) -> EvaluatedTexts:
    """The long texts of everything the domain evaluates, read with the run's readers: each domain
    perplexity document and each item of every domain task -- every item, whatever the eval
    preset's limits, so that a cell's calibration does not depend on its eval preset."""
    items = [long_texts(text) for key, spec in perplexity_sources(domain, {}).items()
             for text in load_texts(spec, root, key)]
    for name, source in task_sources(domain.get("tasks") or {}, root).items():
        items += [long_texts(item) for item in read_task(name, source)]
    return EvaluatedTexts(items)


def check_metric_names(domain: Mapping[str, Any], general: Mapping[str, Any]) -> None:
    """Every perplexity text and task gives its metrics under its own `<scope>/<name>`: two
    settings with one key would write one's numbers over the other's."""
    scope = domain["name"]
    owners: dict[str, str] = {}
    named = [(f"general/{name}", f"data.general.perplexity.{name}")
             for name in general.get("perplexity") or {}]
    named += [(f"{scope}/{name}", f"domain.perplexity.{name}") for name in domain.get("perplexity") or {}]
    named += [(f"{scope}/{name}", f"domain.tasks.{name}") for name in domain.get("tasks") or {}]
    for key, setting in named:
        if key in owners:
            raise ConfigError(f"{owners[key]} and {setting} would both report metrics as {key}/...; "
                              "give one of them another name")
        owners[key] = setting


def evaluate(model: nn.Module, tokenizer: Any, eval_cfg: Mapping[str, Any], domain: Mapping[str, Any],
             general: Mapping[str, Any], root: Path, progress: bool = True) -> EvalResult:
    result = EvalResult()
    start = time.perf_counter()
    settings = perplexity_settings(eval_cfg["perplexity"])
    for key, spec in perplexity_sources(domain, general).items():
        began = time.perf_counter()
        ppl = strided_perplexity(
            model, tokenizer, load_texts(spec, root, key), settings.window, settings.stride,
            settings.max_windows, settings.batch_size, progress, label=key)
        result.metrics[f"{key}/ppl"] = ppl.ppl
        result.metrics[f"{key}/bpb"] = ppl.bpb
        result.details[key] = {**ppl.as_dict(), "seconds": time.perf_counter() - began}
        result.evidence[key] = ppl.evidence()
    tasks = evaluate_domain_tasks(model, tokenizer, domain.get("tasks") or {}, eval_cfg["tasks"], root,
                                  domain=domain["name"])
    result.metrics.update(tasks.metrics)
    result.samples.update(tasks.samples)
    result.evidence.update(tasks.evidence)
    for name, seconds in tasks.seconds.items():
        result.details[name] = {  # name is already <domain>/<task>
            "seconds": seconds, "items": tasks.items.get(name), "limit": tasks.limits.get(name),
            "version": tasks.versions.get(name), **tasks.kinds.get(name, {})}
    result.seconds = time.perf_counter() - start
    return result
