"""Per-item evidence in a cell's results: every metric is recomputed from it exactly, and its
interval is a 95 % interval of the metric over resamples of those items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from bench.results.evidence import Evidence, metric_intervals, metric_samples, paired_difference, point_value
from core.data import resolve_data_root
from core.models import load_model
from evals.suite import evaluate

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture(scope="module")
def legal_result():
    model, tokenizer = load_model(OmegaConf.load(CONF / "model" / "tiny-llama.yaml"))
    config = OmegaConf.load(CONF / "config.yaml")
    domain = OmegaConf.load(CONF / "domain" / "legal.yaml")
    smoke = OmegaConf.load(CONF / "eval" / "smoke.yaml")
    smoke.tasks.limit.casehold = 6
    return evaluate(model, tokenizer, smoke, domain, config.data.general, resolve_data_root(None),
                    progress=False)


def test_every_metric_is_recomputed_from_its_evidence(legal_result) -> None:
    assert set(legal_result.evidence) == {"legal/multilegalpile", "general/wikitext2", "general/c4",
                                          "legal/casehold", "legal/billsum"}
    for name, value in legal_result.metrics.items():
        source, _, metric = name.rpartition("/")
        assert point_value(legal_result.evidence[source], metric) == pytest.approx(value, rel=1e-9), name
    casehold = legal_result.evidence["legal/casehold"]
    assert casehold["n_choices"] == 5 and len(casehold["gold"]) == len(casehold["ids"]) == 6
    assert sum(legal_result.evidence["general/c4"]["tokens"]) == legal_result.details["general/c4"]["tokens"]


def resampled(evidence: Evidence, metric: str, draws: int = 2000) -> np.ndarray:
    """The metric over `draws` resamples of the scored items, drawn here with a generator of
    the test's own."""
    samples, statistic = metric_samples(evidence, metric)
    arrays = [np.asarray(s, dtype=float) for s in samples]
    n = len(arrays[0])
    picks = np.random.default_rng(1).integers(0, n, (draws, n))
    return np.array([statistic(*(a[p] for a in arrays)) for p in picks])


def test_every_metric_has_a_95_percent_interval_over_its_items(legal_result) -> None:
    """Where the items vary, the bootstrap brackets the value strictly (clamping an end to the
    value could only make it equal), within what resampling the items can give, holding at
    least 90 % of such resamples; where every resample gives one value, that value."""
    intervals = metric_intervals(legal_result.metrics, legal_result.evidence)
    assert set(intervals) == set(legal_result.metrics)
    varying = 0
    for name, (low, high) in intervals.items():
        source, _, metric = name.rpartition("/")
        value = legal_result.metrics[name]
        values = resampled(legal_result.evidence[source], metric)
        lowest, highest = values.min(), values.max()
        if lowest == highest:
            assert low == high == value, name
            continue
        varying += 1
        slack = 1e-9 * (highest - lowest)
        assert low < value < high, name
        assert lowest - slack <= low and high <= highest + slack, name
        assert np.mean((low - slack <= values) & (values <= high + slack)) >= 0.9, name
    assert varying == 8  # two windows per text (ppl, bpb) and six CaseHOLD items (acc, macro-F1)


def test_a_model_paired_with_itself_differs_by_exactly_zero(legal_result) -> None:
    casehold = legal_result.evidence["legal/casehold"]
    assert paired_difference(casehold, casehold, "acc") == (0.0, 0.0, 0.0)
