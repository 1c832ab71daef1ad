"""Per-item evidence in a cell's results: every metric is recomputed from it exactly, and its
interval brackets the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench.results.evidence import metric_intervals, paired_difference, point_value
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


def test_every_metric_has_an_interval_around_it(legal_result) -> None:
    intervals = metric_intervals(legal_result.metrics, legal_result.evidence)
    assert set(intervals) == set(legal_result.metrics)
    for name, (low, high) in intervals.items():
        assert low <= legal_result.metrics[name] <= high, name


def test_a_model_paired_with_itself_differs_by_exactly_zero(legal_result) -> None:
    casehold = legal_result.evidence["legal/casehold"]
    assert paired_difference(casehold, casehold, "acc") == (0.0, 0.0, 0.0)
