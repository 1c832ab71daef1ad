"""Recipes that make a data file from an upstream artifact that is not the file itself (a parquet
table, a repository archive of XML documents). The manifest names the recipe and describes it in
words; the fetch checks the result against the manifest's SHA-256, so a recipe that does not
reproduce the file byte for byte fails there, naming the file, and writes nothing."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

Recipe = Callable[[Path, Path, Mapping[str, Any]], None]


def parquet_to_jsonl(source: Path, target: Path, spec: Mapping[str, Any]) -> None:
    """Each row of the table, its `fields` in that order, as one unescaped UTF-8 JSON line."""
    import pyarrow.parquet as pq

    fields = list(spec["fields"])
    rows = pq.read_table(source, columns=fields).to_pylist()
    with open(target, "w", encoding="utf-8", newline="") as out:
        for row in rows:
            line = json.dumps({name: row[name] for name in fields}, ensure_ascii=False, default=str)
            out.write(line + "\n")


def medquad_to_jsonl(source: Path, target: Path, spec: Mapping[str, Any]) -> None:
    """Every answered question of a MedQuAD archive (`<top>/<collection>/<file>.xml`), one JSON line
    each; the collections whose answers were removed upstream contribute nothing."""
    with zipfile.ZipFile(source) as archive, open(target, "w", encoding="utf-8", newline="") as out:
        for row in _medquad_rows(archive):
            out.write(json.dumps(row) + "\n")


def _medquad_rows(archive: zipfile.ZipFile) -> Iterator[dict[str, str]]:
    documents = [name.split("/") for name in archive.namelist() if name.endswith(".xml")]
    for top, collection, file in sorted((parts for parts in documents if len(parts) == 3),
                                        key=lambda parts: parts[1:]):
        document = ET.fromstring(archive.read(f"{top}/{collection}/{file}"))
        focus = (document.findtext("Focus") or "").strip()
        for pair in document.iter("QAPair"):
            answer = (pair.findtext("Answer") or "").strip()
            if answer:
                yield {"collection": collection, "file": file, "focus": focus,
                       "question": (pair.findtext("Question") or "").strip(), "answer": answer}


RECIPES: dict[str, Recipe] = {"parquet-to-jsonl": parquet_to_jsonl, "medquad-xml-to-jsonl": medquad_to_jsonl}
