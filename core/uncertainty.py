"""How sure a number is: bootstrap confidence intervals over the scored items (or perplexity
windows), paired differences between two models scored on the same items, the chance and
majority baselines of a classification task, and the smallest difference an item count can
detect. Pure math on arrays; records and tables call it.

Intervals are scipy's bootstrap (BCa, 95 %) with a fixed seed, so a record's intervals are
reproducible. A sample with no spread (every item equal) has the point value as its interval."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 4000  # the ends move by well under the last digit shown (tests/test_uncertainty.py)
SEED = 0
POWER = 0.8

Statistic = Callable[..., float]


def bootstrap_interval(samples: Sequence[Sequence[float]], statistic: Statistic, *,
                       seed: int = SEED, resamples: int = RESAMPLES) -> tuple[float, float]:
    """95 % interval of `statistic(*samples)`, resampling items: the i-th entries of all samples
    stay together (one item's numbers, or one item under two models)."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    point = float(statistic(*arrays))
    if len(arrays[0]) < 2 or all(np.all(a == a[0]) for a in arrays):
        return point, point
    low, high = _scipy_interval(arrays, statistic, seed, resamples, "BCa")
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined (a degenerate resample)
        low, high = _scipy_interval(arrays, statistic, seed, resamples, "percentile")
    return min(low, point), max(high, point)


def _scipy_interval(arrays: list[np.ndarray], statistic: Statistic, seed: int, resamples: int,
                    method: str) -> tuple[float, float]:
    with warnings.catch_warnings():  # a degenerate BCa is detected above, not warned about
        warnings.simplefilter("ignore")
        result = stats.bootstrap(arrays, statistic, paired=True, vectorized=False, confidence_level=LEVEL,
                                 n_resamples=resamples, method=method, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def perplexity(nll: np.ndarray, tokens: np.ndarray) -> float:
    """exp(total NLL / total tokens): resampled windows keep their own token counts."""
    return math.exp(float(np.sum(nll)) / float(np.sum(tokens)))


def bits_per_byte(nll: np.ndarray, byte_counts: np.ndarray) -> float:
    return float(np.sum(nll)) / math.log(2) / float(np.sum(byte_counts))


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over the classes present in gold or predictions (as evals.metrics.macro_f1),
    counted with bincount: it runs once per bootstrap resample."""
    _, codes = np.unique(np.concatenate([gold, pred]), return_inverse=True)
    gold_codes, pred_codes = codes[: len(gold)], codes[len(gold):]
    classes = int(codes.max()) + 1
    hits = np.bincount(gold_codes[gold_codes == pred_codes], minlength=classes)
    counts = np.bincount(gold_codes, minlength=classes) + np.bincount(pred_codes, minlength=classes)
    return float(np.mean(2.0 * hits / counts))


def difference(statistic: Statistic, arity: int) -> Statistic:
    """statistic(model a's samples) - statistic(model b's samples), for a paired bootstrap over
    `arity` arrays per model (a's first)."""
    def diff(*arrays: np.ndarray) -> float:
        return statistic(*arrays[:arity]) - statistic(*arrays[arity:])
    return diff


def chance_and_majority(gold: Sequence[int], n_choices: int | Sequence[int]) -> dict[str, dict[str, float]]:
    """Expected accuracy and macro-F1 of guessing uniformly among each item's choices (one count
    for all items, or one per item), and of always answering the most frequent gold label, over
    the items actually scored."""
    gold = np.asarray(gold)
    per_item = np.broadcast_to(np.asarray(n_choices), gold.shape)
    counts = [int(k) for k in np.unique(per_item)]
    # as shares of the items, by count k (one count gives exactly 1/k): an item with k choices
    # picks each with chance 1/k, so class c is expected to be predicted on the items with k > c
    with_k = {k: float(np.sum(per_item == k)) / len(gold) for k in counts}
    f1 = []
    for c in range(max(counts)):
        hits = sum(float(np.sum((gold == c) & (per_item == k))) / len(gold) / k for k in counts)
        predicted = sum(with_k[k] / k for k in counts if k > c)
        f1.append(2 * hits / (float(np.sum(gold == c)) / len(gold) + predicted))
    labels, label_counts = np.unique(gold, return_counts=True)
    top = float((label_counts / label_counts.sum()).max())
    # always the majority class: F1 of that class, zero for the other present classes
    majority_f1 = 2 * top / (1 + top) / len(labels)
    return {"chance": {"acc": sum(with_k[k] / k for k in counts), "macro_f1": float(np.mean(f1))},
            "majority": {"acc": top, "macro_f1": majority_f1}}


def detectable_difference(variance: float, n: int) -> float:
    """Smallest true difference between two models scored on `n` items each that a two-sided 5 %
    test finds with 80 % power, given the per-item variance of the metric (p(1-p) for
    accuracy)."""
    if n < 1:
        return math.inf
    z = stats.norm.ppf(1 - (1 - LEVEL) / 2) + stats.norm.ppf(POWER)
    return float(z * math.sqrt(2 * variance / n))


def item_variance(samples: Sequence[Sequence[float]], statistic: Statistic) -> float:
    """The per-item variance `detectable_difference` takes, for any statistic: n times its
    jackknife variance (leave one item out). For a mean that is the items' sample variance
    (p(1-p)·n/(n-1) for accuracy); for a ratio such as perplexity it is the delta method's."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    n = len(arrays[0])
    if n < 2:
        return 0.0
    left_out = np.array([statistic(*(np.delete(a, i) for a in arrays)) for i in range(n)])
    return float((n - 1) * np.sum((left_out - left_out.mean()) ** 2))
