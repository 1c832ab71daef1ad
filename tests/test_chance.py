"""The chance level of a choice task whose items have different numbers of choices: uniform
guessing on each item among its own choices (accuracy: the mean of 1/n over the items), recorded
per item by the evaluation, used by the `≈chance` marks; old records fall back to the largest
count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from bench.leaderboard.__main__ import main
from bench.results.evidence import baselines
from core.data import PROJECT_ROOT
from core.models import load_model
from core.uncertainty import chance_and_majority, macro_f1
from evals.lm_tasks import evaluate_domain_tasks
from tests.test_leaderboard_uncertainty import ACC, board, choice, record

TWO_AND_FIVE = [2, 5] * 50  # mean of 1/n: (1/2 + 1/5) / 2 = 0.35; the largest count's 1/5 = 0.2


def mixed(correct: np.ndarray, gold: np.ndarray) -> dict:
    """Choice evidence over items of 2 and 5 choices, right where `correct`."""
    found = choice(correct, 5, gold)
    found["pred"] = np.where(correct, gold, (gold + 1) % np.asarray(TWO_AND_FIVE)).tolist()
    return found | {"item_choices": TWO_AND_FIVE}


def spread_gold() -> np.ndarray:
    """Gold 0/1 on the 2-choice items, 2-4 on the 5-choice ones: majority 0.25, chance 0.35."""
    half = np.arange(50)
    return np.stack([half % 2, 2 + half % 3], axis=1).ravel()


def test_chance_accuracy_is_the_mean_of_each_items_own_chance() -> None:
    gold = np.arange(100) % 2
    evidence = mixed(np.zeros(100, dtype=bool), gold)
    assert baselines(evidence)["chance"]["acc"] == pytest.approx(0.35)
    before = {k: v for k, v in evidence.items() if k != "item_choices"}  # a record before item_choices
    assert baselines(before)["chance"]["acc"] == pytest.approx(0.2)
    majority = {"acc": 0.5, "macro_f1": pytest.approx(1 / 3)}  # F1 2/3 on class 0, 0 on class 1
    assert baselines(before)["majority"] == baselines(evidence)["majority"] == majority


def test_one_count_per_item_is_one_count_for_all() -> None:
    gold = np.random.default_rng(0).integers(0, 4, size=37)
    assert chance_and_majority(gold, [4] * 37) == chance_and_majority(gold, 4)
    assert chance_and_majority(gold, 4)["chance"]["acc"] == 0.25


def test_chance_macro_f1_matches_simulated_guessing() -> None:
    rng = np.random.default_rng(1)
    counts = np.array(TWO_AND_FIVE)
    gold = rng.integers(0, counts)
    expected = chance_and_majority(gold, counts)["chance"]
    guesses = [rng.integers(0, counts) for _ in range(4000)]
    assert np.mean([np.mean(g == gold) for g in guesses]) == pytest.approx(expected["acc"], abs=0.005)
    assert np.mean([macro_f1(gold, g) for g in guesses]) == pytest.approx(expected["macro_f1"], abs=0.01)


def test_near_chance_is_judged_against_each_items_own_chance(tmp_path: Path) -> None:
    """A method right on ~45 % of the items clears the largest count's 0.2 and the majority's
    0.25, not the items' own chance of 0.35."""
    gold = spread_gold()
    hits = np.random.default_rng(3).random(100) < 0.45
    records = [record("dense", "dense", {"legal/casehold": mixed(np.ones(100, dtype=bool), gold)}),
               record("magnitude", "magnitude", {"legal/casehold": mixed(hits, gold)})]
    low = records[1]["metrics_ci"][ACC][0]
    assert 0.2 < low < 0.35, low  # the case the largest count gets wrong
    md, rows, _ = board(tmp_path, records)
    assert "Chance / majority over the items scored: casehold acc 0.350 / 0.250." in md
    assert [r[f"{ACC}_near_chance"] for r in rows] == ["False", "True"]


def test_old_records_are_still_judged_against_the_largest_count(tmp_path: Path) -> None:
    gold = spread_gold()
    hits = np.random.default_rng(3).random(100) < 0.45
    records = [record("dense", "dense", {"legal/casehold": mixed(np.ones(100, dtype=bool), gold)}),
               record("magnitude", "magnitude", {"legal/casehold": mixed(hits, gold)})]
    for r in records:
        del r["evidence"]["legal/casehold"]["item_choices"]
    md, rows, _ = board(tmp_path, records)
    assert "casehold acc 0.200 / 0.250." in md
    assert [r[f"{ACC}_near_chance"] for r in rows] == ["False", "False"]


def test_bad_per_item_counts_skip_the_record(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evidence = mixed(np.ones(100, dtype=bool), np.arange(100) % 2)
    evidence["item_choices"] = [2, 0] * 50
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "bad.json").write_text(json.dumps(record("bad", "dense", {"legal/casehold": evidence})))
    assert main([str(folder), "--out", str(tmp_path / "board"), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert "evidence legal/casehold item_choices is [2, 0, 2, 0, 2, 0, ...], not counts" in err


def test_the_evaluation_records_each_items_number_of_choices(tmp_path: Path) -> None:
    exam = tmp_path / "exam.jsonl"
    options = ["yes", "no", "maybe", "never", "always"]
    rows = [{"stem": f"Question {i}?", "options": options[:n], "gold": i % 2}
            for i, n in enumerate([2, 5, 2, 5])]
    exam.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tasks = {"exam": {"kind": "choice", "path": str(exam),
                      "fields": {"prompt": "stem", "choices": "options", "label": "gold"}}}
    model, tokenizer = load_model(OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "tiny-llama.yaml"))
    result = evaluate_domain_tasks(model, tokenizer, tasks, {"batch_size": 1}, tmp_path, domain="school")
    evidence = result.evidence["school/exam"]
    assert evidence["item_choices"] == [2, 5, 2, 5] and evidence["n_choices"] == 5
    assert baselines(evidence)["chance"]["acc"] == pytest.approx(0.35)
