"""Intervals, paired differences and baselines against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.uncertainty import (
    bootstrap_interval,
    chance_and_majority,
    detectable_difference,
    difference,
    macro_f1,
    mean,
    perplexity,
)
from evals.metrics import macro_f1 as sklearn_macro_f1


def test_mean_interval_covers_the_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(1)
    draws, hits = 200, 0
    for seed in range(draws):
        sample = rng.binomial(1, 0.3, size=80)
        low, high = bootstrap_interval([sample], mean, seed=seed, resamples=1000)
        hits += low <= 0.3 <= high
    assert 0.89 <= hits / draws <= 0.99, hits / draws


def test_interval_ends_are_stable_across_bootstrap_seeds() -> None:
    sample = np.random.default_rng(2).binomial(1, 0.6, size=200)
    ends = [bootstrap_interval([sample], mean, seed=seed) for seed in range(3)]
    assert max(e[0] for e in ends) - min(e[0] for e in ends) < 0.01
    assert max(e[1] for e in ends) - min(e[1] for e in ends) < 0.01


def test_perplexity_interval_collapses_when_every_window_is_identical() -> None:
    nll, tokens = np.full(10, 35.0), np.full(10, 10)
    low, high = bootstrap_interval([nll, tokens], perplexity)
    assert low == high == pytest.approx(math.exp(3.5))


def test_perplexity_interval_brackets_the_point_value() -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(100, 512, size=30)
    nll = tokens * rng.normal(3.0, 0.3, size=30)
    point = perplexity(nll, tokens)
    low, high = bootstrap_interval([nll, tokens], perplexity)
    assert low < point < high and high / low < 1.5


def test_paired_difference_finds_a_planted_effect_and_not_a_null_one() -> None:
    rng = np.random.default_rng(4)
    flagged_null, found = 0, 0
    runs = 100
    for seed in range(runs):
        base = rng.binomial(1, 0.5, size=150)
        flips = rng.random(150)
        null = np.where(flips < 0.1, 1 - base, base)  # same accuracy on average
        better = np.where(flips < 0.2, 1, base)  # about +10 points, paired with `base`
        low, high = bootstrap_interval([null, base], difference(mean, 1), seed=seed, resamples=1000)
        flagged_null += not low <= 0.0 <= high
        low, high = bootstrap_interval([better, base], difference(mean, 1), seed=seed, resamples=1000)
        found += low > 0.0
    assert flagged_null / runs <= 0.12
    assert found / runs >= 0.9


def test_macro_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        gold, pred = rng.integers(0, 3, size=40), rng.integers(0, 4, size=40)
        assert macro_f1(gold, pred) == pytest.approx(sklearn_macro_f1(gold.tolist(), pred.tolist()))


def test_chance_and_majority_baselines_match_simulation() -> None:
    gold = np.array([0] * 60 + [1] * 30 + [2] * 10)
    baselines = chance_and_majority(gold, n_choices=3)
    assert baselines["majority"]["acc"] == pytest.approx(0.6)
    assert baselines["majority"]["macro_f1"] == pytest.approx(sklearn_macro_f1(gold.tolist(), [0] * 100))
    assert baselines["chance"]["acc"] == pytest.approx(1 / 3)
    rng = np.random.default_rng(6)
    simulated = np.mean([macro_f1(gold, rng.integers(0, 3, size=100)) for _ in range(3000)])
    assert baselines["chance"]["macro_f1"] == pytest.approx(simulated, abs=0.01)


def test_detectable_difference_follows_the_textbook_formula() -> None:
    # two proportions near 0.5, n = 392 per arm: (1.96 + 0.84) * sqrt(2 * 0.25 / 392) = 0.1
    assert detectable_difference(0.25, 392) == pytest.approx(0.1, abs=0.001)
    assert detectable_difference(0.25, 4 * 392) == pytest.approx(0.05, abs=0.001)
    assert detectable_difference(0.25, 0) == math.inf
