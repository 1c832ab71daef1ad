"""Everything a cell evaluates after pruning: domain and general perplexity and the domain's
lm-eval tasks, as one flat metrics dict keyed `<domain|general>/<task>/<metric>`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from core.data import data_path, load_texts
from evals.lm_tasks import check_tasks, evaluate_domain_tasks
from evals.perplexity import strided_perplexity


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # per task: windows, items, seconds...
    samples: dict[str, list[dict]] = field(default_factory=dict)
    seconds: float = 0.0


def perplexity_sources(domain: Mapping[str, Any], general: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """`<scope>/<name>` -> text spec, for the domain's and the general perplexity texts."""
    sources = {f"{domain['name']}/{name}": spec for name, spec in domain.get("perplexity", {}).items()}
    sources.update({f"general/{name}": spec for name, spec in general.get("perplexity", {}).items()})
    return sources


def check_eval_inputs(domain: Mapping[str, Any], general: Mapping[str, Any], root: Path) -> None:
    """Every evaluation file exists and reads (raises ConfigError naming the bad one)."""
    for spec in perplexity_sources(domain, general).values():
        if not spec.get("hub"):
            data_path(root, spec["path"])
    check_tasks(domain.get("tasks") or {}, root)


def evaluate(model: nn.Module, tokenizer: Any, eval_cfg: Mapping[str, Any], domain: Mapping[str, Any],
             general: Mapping[str, Any], root: Path, progress: bool = True) -> EvalResult:
    result = EvalResult()
    start = time.perf_counter()
    settings = eval_cfg["perplexity"]
    for key, spec in perplexity_sources(domain, general).items():
        began = time.perf_counter()
        ppl = strided_perplexity(
            model, tokenizer, load_texts(spec, root), settings["window"], settings["stride"],
            settings.get("max_windows"), settings.get("batch_size", 1), progress, label=key)
        result.metrics[f"{key}/ppl"] = ppl.ppl
        result.metrics[f"{key}/bpb"] = ppl.bpb
        result.details[key] = {**ppl.as_dict(), "seconds": time.perf_counter() - began}
    tasks = evaluate_domain_tasks(model, tokenizer, domain.get("tasks") or {}, eval_cfg["tasks"], root)
    result.metrics.update(tasks.metrics)
    result.samples.update(tasks.samples)
    for name, seconds in tasks.seconds.items():
        result.details[name] = {  # name is already <domain>/<task>
            "seconds": seconds, "items": tasks.items.get(name), "limit": tasks.limits.get(name),
            "version": tasks.versions.get(name)}
    result.seconds = time.perf_counter() - start
    return result
