"""Evaluated text inside the domain calibration (`domain.calib.exclude_evaluated`).

An evaluated item -- a domain perplexity document, a task item -- stands in the calibration when
every one of its long texts (SHORTEST characters or more: a label or a title is no evidence) is
held by some calibration item, compared whitespace-folded and lower-cased. A single long text of
an item recurring alone is no leak: a CaseHOLD test item's candidate holdings recur as training
holdings by design, and a question beside an unseen reference is not its answer. The exclusion
leaves out every calibration item that holds a text of a standing item, and nothing else, so that
no evaluated item stands in what remains (tests/test_budget_disjoint.py checks the drawn stream).

The search runs before the model loads: the evaluated texts are indexed by their first SHORTEST
characters, and each calibration text is slid over once, a candidate verified where its start
matches."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SHORTEST = 80  # characters


def normal(text: str) -> str:
    """Whitespace runs folded to one space, trimmed, lower case: how texts are compared."""
    return re.sub(r"\s+", " ", text).strip().lower()


def long_texts(value: Any) -> tuple[str, ...]:
    """The normalised texts of SHORTEST characters or more in a document or an item (a mapping or
    list of fields, nested), in field order."""
    found: list[str] = []
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            pending.extend(reversed(list(node.values())))
        elif isinstance(node, list | tuple):
            pending.extend(reversed(node))
        elif isinstance(node, str) and len(text := normal(node)) >= SHORTEST:
            found.append(text)
    return tuple(found)


class EvaluatedTexts:
    """The long texts of every evaluated item (each item's as `long_texts` gives them)."""

    def __init__(self, items: Iterable[Sequence[str]]) -> None:
        self.items = [tuple(texts) for texts in items if texts]
        self._by_start: dict[str, list[str]] = {}
        for text in dict.fromkeys(text for texts in self.items for text in texts):
            self._by_start.setdefault(text[:SHORTEST], []).append(text)

    def held_by(self, text: str) -> set[str]:
        """The evaluated texts that `text` holds."""
        text, found = normal(text), set()
        for start in range(len(text) - SHORTEST + 1):
            for candidate in self._by_start.get(text[start : start + SHORTEST], ()):
                if text.startswith(candidate, start):
                    found.add(candidate)
        return found

    def exclude(self, sources: Mapping[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, int]]:
        """Each source's texts without those that hold a text of an evaluated item standing in
        them all (order kept), and how many each source lost."""
        held = {name: [self.held_by(text) for text in texts] for name, texts in sources.items()}
        present = {text for found in held.values() for texts in found for text in texts}
        standing = {text for texts in self.items if present.issuperset(texts) for text in texts}
        kept = {name: [text for text, found in zip(texts, held[name], strict=True) if not found & standing]
                for name, texts in sources.items()}
        return kept, {name: len(sources[name]) - len(kept[name]) for name in sources}
