"""Task metrics on constructed predictions."""

from __future__ import annotations

import pytest

from evals.metrics import accuracy, macro_f1, rouge


def test_macro_f1_matches_hand_computation():
    golds = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    # class 0: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 0.8
    # class 1: tp 1, fp 1, fn 1 -> F1 0.5
    # class 2: tp 1, fp 1, fn 0 -> P 1/2, R 1, F1 2/3
    assert macro_f1(golds, preds) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert accuracy(golds, preds) == pytest.approx(4 / 6)


def test_macro_f1_punishes_majority_guessing():
    golds = [0, 0, 0, 1]
    assert accuracy(golds, [0, 0, 0, 0]) == 0.75
    assert macro_f1(golds, [0, 0, 0, 0]) == pytest.approx((6 / 7 + 0.0) / 2)  # class 1 never predicted


def test_metrics_reject_mismatched_lists():
    with pytest.raises(ValueError):
        macro_f1([0, 1], [0])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_rouge_identical_is_one_and_disjoint_is_zero():
    text = "The bill requires the Secretary to report to Congress.\nIt takes effect in 2010."
    assert all(v == pytest.approx(1.0) for v in rouge(text, text).values())
    assert all(v == 0.0 for v in rouge("apples and oranges", "quantum chromodynamics lattice").values())


def test_rouge_uses_the_stemmer_and_newline_sentences():
    assert rouge("the bills were amended", "the bill was amending")["rouge1"] > 0.7  # bill(s), amend(ed|ing)
    scores = rouge("Requires reports.\nAmends the Act.", "Amends the Act.\nRequires reports.")
    assert scores["rougeLsum"] == pytest.approx(1.0)  # sentence-level LCS over newline-split sentences
    assert scores["rougeL"] < 1.0
