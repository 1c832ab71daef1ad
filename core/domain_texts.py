"""Domain calibration texts: each domain's training items rendered as plain text through prompt
templates (the task's input, question and answer stated in a sentence or two). Only calibration
splits are read; the two held-out parts that share a file with
calibration data are excluded here: PubMedQA's official test ids and MedQuAD's perplexity slice
(with every answer whose text repeats one of that slice). With `domain.calib.exclude_evaluated`,
the items that hold an evaluated item are left out too (core/evaluated.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from core.checks import as_int
from core.data import data_path
from core.errors import ConfigError
from core.evaluated import EvaluatedTexts
from core.formats import passage, pubmedqa_answers, pubmedqa_items, read_jsonl, rqe_pairs, text
from core.items import BILLSUM_FIELDS, CASEHOLD_FIELDS, MEQSUM_FIELDS, item


def _clean(text: str) -> str:
    """Collapse the runs of spaces and indented line breaks that scraped sources carry."""
    text = re.sub(r"[ \t]*\n\s*", "\n", str(text).strip())
    return re.sub(r"[ \t]{2,}", " ", text)


# --- templates: one training item -> one natural text ------------------------------------------
# Each reads its row with the dataset's layout (core/items.py) or typed reads (core/formats.py),
# as the evaluation reads the dataset's test rows.

def pubmedqa_text(entry: Mapping[str, Any]) -> str:
    return (f"Context: {_clean(passage(entry, 'CONTEXTS'))}\nQuestion: {_clean(text(entry, 'QUESTION'))}\n"
            f"The answer is {text(entry, 'final_decision')}. {_clean(text(entry, 'LONG_ANSWER'))}")


def meqsum_text(row: Mapping[str, Any]) -> str:
    pair = item("summary", row, MEQSUM_FIELDS)
    return (f"A patient asks: {_clean(pair['source'])}\n"
            f"In short, the patient's question is: {_clean(pair['summary'])}")


def rqe_text(chq: str, faq: str, entails: bool) -> str:
    answer = "Yes" if entails else "No"
    return (f"Question A: {_clean(chq)}\nQuestion B: {_clean(faq)}\n"
            f"Does an answer to question B also answer question A? {answer}.")


def medquad_text(row: Mapping[str, Any]) -> str:
    return f"Question: {_clean(text(row, 'question'))}\nAnswer: {_clean(text(row, 'answer'))}"


def casehold_text(row: Mapping[str, Any]) -> str:
    """The citing passage with its correct holding written in place of the <HOLDING> mark."""
    case = item("choice", row, CASEHOLD_FIELDS)
    holding = case["choices"][case["label"]]
    return _clean(case["prompt"]).replace("<HOLDING>", f"({_clean(holding)})", 1)


def billsum_text(row: Mapping[str, Any]) -> str:
    bill = item("summary", row, BILLSUM_FIELDS)
    return (f"The text of a bill follows. {_clean(bill['source'])}\n"
            f"Summary of the bill: {_clean(bill['summary'])}")


# --- sources: one source spec -> its rendered texts --------------------------------------------

def _pubmedqa(spec: Mapping[str, Any], root: Path) -> list[str]:
    """PQA-L items whose id is not in the official test split (`exclude_ids`)."""
    entries = pubmedqa_items(data_path(root, spec["path"]))
    test = pubmedqa_answers(data_path(root, spec["exclude_ids"]))
    return [pubmedqa_text(entry) for key, entry in entries.items() if key not in test]


def _meqsum(spec: Mapping[str, Any], root: Path) -> list[str]:
    return [meqsum_text(row) for row in read_jsonl(data_path(root, spec["path"]))]


def _rqe(spec: Mapping[str, Any], root: Path) -> list[str]:
    return [rqe_text(pair.chq, pair.faq, pair.entails) for pair in rqe_pairs(data_path(root, spec["path"]))]


def _medquad(spec: Mapping[str, Any], root: Path) -> list[str]:
    """Rows outside the perplexity slice (index % skip_every == 0) and not repeating its answers."""
    rows = read_jsonl(data_path(root, spec["path"]), ["question", "answer"])
    every = int(spec["skip_every"])
    if every < 1:
        raise ConfigError(f"medquad skip_every={every} must be >= 1 (the perplexity slice's `every`)")
    held_out = {text(row, "answer") for row in rows[::every]}
    return [medquad_text(row) for index, row in enumerate(rows)
            if index % every and text(row, "answer") not in held_out]


def _casehold(spec: Mapping[str, Any], root: Path) -> list[str]:
    return [casehold_text(row) for row in read_jsonl(data_path(root, spec["path"]))]


def _billsum(spec: Mapping[str, Any], root: Path) -> list[str]:
    return [billsum_text(row) for row in read_jsonl(data_path(root, spec["path"]))]


CALIB_FORMATS: dict[str, Callable[[Mapping[str, Any], Path], list[str]]] = {  # domain.calib.sources.*.format
    "pubmedqa": _pubmedqa, "meqsum": _meqsum, "rqe": _rqe, "medquad": _medquad,
    "casehold": _casehold, "billsum": _billsum,
}


def _evenly(items: list[str], limit: int | None) -> list[str]:
    """At most `limit` items spread evenly over the list (files are often sorted by topic)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(int(limit))]


class DomainTexts(list[str]):
    """A domain's rendered calibration texts, source after source; `dropped`: per source, the
    items left out for holding an evaluated item (empty where none were looked for)."""

    def __init__(self, texts: Iterable[str] = (), dropped: Mapping[str, int] | None = None) -> None:
        super().__init__(texts)
        self.dropped = dict(dropped or {})


def domain_texts(calib_cfg: Mapping[str, Any], data_root: Path,
                 evaluated: EvaluatedTexts | None = None) -> DomainTexts:
    """Every rendered calibration text of a domain (`domain.calib`), source after source, each
    source within its `limit`; given the `evaluated` texts, without the items that hold them."""
    sources = calib_cfg.get("sources") or {}
    if not sources:
        raise ConfigError("domain.calib.sources is empty; the domain has no calibration texts")
    by_source: dict[str, list[str]] = {}
    for name, spec in sources.items():
        render = CALIB_FORMATS.get(spec.get("format", name))
        if render is None:
            raise ConfigError(f"domain.calib.sources.{name}.format={spec.get('format')!r}; "
                              f"choose one of {sorted(CALIB_FORMATS)}")
        found = render(spec, data_root)
        if not any(text.strip() for text in found):
            raise ConfigError(f"domain.calib.sources.{name}: {spec.get('path')} has no items")
        limit = spec.get("limit")
        if limit is not None:
            limit = as_int(f"domain.calib.sources.{name}.limit", limit)
            if limit < 1:
                raise ConfigError(f"domain.calib.sources.{name}.limit={limit!r} must be >= 1 (null: every "
                                  f"item); to leave the source out, drop it: ~domain.calib.sources.{name}")
        by_source[name] = _evenly(found, limit)
    dropped: dict[str, int] = {}
    if evaluated is not None:
        by_source, dropped = evaluated.exclude(by_source)
    return DomainTexts((text for texts in by_source.values() for text in texts), dropped)
