"""Task metrics shared by the lm-eval hooks and the tests: accuracy, macro-F1 (scikit-learn) and
ROUGE F1 (rouge_score with the Porter stemmer). ROUGE-Lsum splits sentences on newlines, so no
nltk data is needed."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer
from sklearn.metrics import f1_score

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def accuracy(golds: Sequence[int], preds: Sequence[int]) -> float:
    if len(golds) != len(preds) or not golds:
        raise ValueError(f"need equal, non-empty label lists, got {len(golds)} and {len(preds)}")
    return sum(g == p for g, p in zip(golds, preds, strict=True)) / len(golds)


def macro_f1(golds: Sequence[int], preds: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in gold or predictions (scikit-learn's
    default label set); a class never predicted counts as F1 = 0, so majority guessing scores low."""
    if len(golds) != len(preds) or not golds:
        raise ValueError(f"need equal, non-empty label lists, got {len(golds)} and {len(preds)}")
    return float(f1_score(list(golds), list(preds), average="macro", zero_division=0))


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True, split_summaries=False)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F1 of one prediction against one reference."""
    scores = _scorer().score(reference, prediction)
    return {key: float(scores[key].fmeasure) for key in ROUGE_KEYS}
