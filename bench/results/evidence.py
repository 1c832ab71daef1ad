"""Per-item evidence in a record, and the statistics recomputed from it without a model.

A record's `evidence` maps each scored source (`<domain|general>/<name>`) to compact arrays:
  perplexity texts: {kind: perplexity, nll: [summed NLL per window], tokens: [...], bytes: [...]}
  choice tasks:     {kind: choice, ids, gold, pred, item_choices, n_choices} -> acc, macro_f1
                    (item_choices: each item's number of choices; n_choices: the largest)
  generation tasks: {kind: generation, ids, <rouge key>: [per item]} -> the ROUGE means
From it come `metrics_ci` (a 95 % bootstrap interval per metric), paired differences between two
records scored on the same items, and the chance / majority baselines of choice tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.uncertainty import (
    bits_per_byte,
    bootstrap_interval,
    chance_and_majority,
    difference,
    macro_f1,
    mean,
    perplexity,
)

Evidence = Mapping[str, Any]


def metric_samples(evidence: Evidence, metric: str) -> tuple[list[np.ndarray], Any]:
    """The per-item arrays a metric is computed from, and its statistic."""
    kind = evidence["kind"]
    if kind == "perplexity":
        nll = np.asarray(evidence["nll"], dtype=float)
        if metric == "ppl":
            return [nll, np.asarray(evidence["tokens"], dtype=float)], perplexity
        if metric == "bpb":
            return [nll, np.asarray(evidence["bytes"], dtype=float)], bits_per_byte
    if kind == "choice":
        gold, pred = np.asarray(evidence["gold"]), np.asarray(evidence["pred"])
        if metric == "acc":
            return [(gold == pred).astype(float)], mean
        if metric == "macro_f1":
            return [gold, pred], macro_f1
    if kind == "generation" and metric in evidence:
        return [np.asarray(evidence[metric], dtype=float)], mean
    raise KeyError(f"no evidence for metric {metric!r} in a {kind!r} source")


def point_value(evidence: Evidence, metric: str) -> float:
    samples, statistic = metric_samples(evidence, metric)
    return float(statistic(*samples))


def metric_intervals(metrics: Mapping[str, float], evidence: Mapping[str, Evidence],
                     seed: int = 0) -> dict[str, list[float]]:
    """`metrics_ci`: {metric name: [low, high]} for every metric backed by evidence."""
    intervals = {}
    for name in metrics:
        source, _, metric = name.rpartition("/")
        if source not in evidence:
            continue
        samples, statistic = metric_samples(evidence[source], metric)
        intervals[name] = list(bootstrap_interval(samples, statistic, seed=seed))
    return intervals


def _items(evidence: Evidence) -> list:
    """What identifies the scored items: task item ids, or a text's window token counts."""
    return list(evidence["ids"] if "ids" in evidence else evidence["tokens"])


def paired_difference(a: Evidence, b: Evidence, metric: str, seed: int = 0) -> tuple[float, float, float]:
    """(a - b, low, high): the difference of one metric between two models scored on the same
    items, with a 95 % interval from resampling items jointly."""
    if _items(a) != _items(b):
        raise ValueError("paired comparison needs both records scored on the same items")
    samples_a, statistic = metric_samples(a, metric)
    samples_b, _ = metric_samples(b, metric)
    diff = difference(statistic, len(samples_a))
    value = float(diff(*samples_a, *samples_b))
    low, high = bootstrap_interval([*samples_a, *samples_b], diff, seed=seed)
    return value, low, high


def baselines(evidence: Evidence) -> dict[str, dict[str, float]] | None:
    """Chance and majority scores of a choice task over the items it scored, chance from each
    item's own number of choices; None for other kinds."""
    if evidence["kind"] != "choice":
        return None
    # Records written before `item_choices` hold only the largest count: exact for every built-in
    # task (a fixed number of choices), too low a chance for a task whose items differ.
    return chance_and_majority(evidence["gold"], evidence.get("item_choices") or int(evidence["n_choices"]))


def seeds_difference(a: Sequence[Evidence], b: Sequence[Evidence], metric: str,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean over a's seeds - mean over b's seeds, low, high) for rows scored under several seeds
    on the same items: items are resampled jointly across every seed of both, so the interval
    holds the item variation only (one seed each: `paired_difference`)."""
    items = _items(a[0])
    if any(_items(e) != items for e in [*a, *b]):
        raise ValueError("paired comparison needs every seed scored on the same items")
    parts = [metric_samples(e, metric) for e in [*a, *b]]
    statistic, arity = parts[0][1], len(parts[0][0])
    values = [s for samples, _ in parts for s in samples]

    def diff(*arrays: np.ndarray) -> float:
        scores = [statistic(*arrays[i:i + arity]) for i in range(0, len(arrays), arity)]
        return float(np.mean(scores[:len(a)]) - np.mean(scores[len(a):]))

    low, high = bootstrap_interval(values, diff, seed=seed)
    return diff(*(np.asarray(v, dtype=float) for v in values)), low, high
