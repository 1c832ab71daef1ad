"""The reader rules, in every format and for every reader (task docs, calibration texts,
perplexity texts): text fields hold strings, references and choices hold text, a byte order mark
is never read as text, JSON lines end at "\\n" only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data import load_texts
from core.domain_texts import domain_texts
from core.errors import ConfigError
from evals.lm_tasks import check_tasks, task_sources
from evals.tasks.declarations import read_task

BOM = "\ufeff".encode()
BILL = {"source": "To name a post office.", "summary": "Names a post office."}
HOLDINGS = {f"holding_{k}": f"holding {k}" for k in range(5)}
CASE = {"citing_prompt": "See Smith v. Jones (<HOLDING>).", **HOLDINGS, "label": "1", "example_id": "7"}


def jsonl(path: Path, rows: list[dict], prefix: bytes = b"", end: str = "\n") -> Path:
    path.write_bytes(prefix + "".join(json.dumps(row, ensure_ascii=False) + end for row in rows).encode())
    return path


def docs(name: str, spec: dict, root: Path) -> list[dict]:
    return read_task(name, task_sources({name: spec}, root)[name])


def calib(fmt: str, path: Path) -> list[str]:
    return domain_texts({"sources": {fmt: {"format": fmt, "path": str(path)}}}, path.parent)


def perplexity(path: Path) -> list[str]:
    return load_texts(str(path), path.parent)


# --- text fields hold strings -------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, 12345, 1.5, True, ["a list"]])
def test_a_non_string_text_field_is_refused_naming_file_line_and_field(tmp_path, value):
    rows = [{"text": "fine"}, {"text": value}]
    with pytest.raises(ConfigError, match=r"ppl\.jsonl:2: field 'text' holds \w+ .*; expected text"):
        perplexity(jsonl(tmp_path / "ppl.jsonl", rows))  # was scored as its spelling ("None", "12345")
    bills = jsonl(tmp_path / "bills.jsonl", [BILL, {**BILL, "summary": value}])
    with pytest.raises(ConfigError, match=r"bills\.jsonl:2: field 'summary' holds \w+ .*; expected text"):
        calib("billsum", bills)  # was rendered as "Summary of the bill: None"
    with pytest.raises(ConfigError, match=r"bills\.jsonl:2: field 'summary' holds"):
        check_tasks({"billsum": {"path": str(bills)}}, tmp_path)


def test_non_string_fields_of_every_calibration_format(tmp_path):
    cases = jsonl(tmp_path / "cases.jsonl", [CASE, {**CASE, "citing_prompt": 3}])
    with pytest.raises(ConfigError, match=r"cases\.jsonl:2: field 'citing_prompt' holds int"):
        calib("casehold", cases)
    questions = jsonl(tmp_path / "meqsum.jsonl", [{"CHQ": None, "Summary": "s"}])
    with pytest.raises(ConfigError, match=r"meqsum\.jsonl:1: field 'CHQ' holds NoneType"):
        calib("meqsum", questions)
    answers = jsonl(tmp_path / "medquad.jsonl", [{"question": "q", "answer": "a"},
                                                 {"question": 1, "answer": "b"}])
    medquad = {"format": "medquad", "path": str(answers), "skip_every": 5}
    with pytest.raises(ConfigError, match=r"medquad\.jsonl:2: field 'question' holds int"):
        domain_texts({"sources": {"medquad": medquad}}, tmp_path)
    items = tmp_path / "ori_pqal.json"
    items.write_text(json.dumps({"1": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "yes",
                                       "LONG_ANSWER": None}}))
    (tmp_path / "test.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"ori_pqal\.json, item 1: field 'LONG_ANSWER' holds NoneType"):
        domain_texts({"sources": {"p": {"format": "pubmedqa", "path": str(items),
                                        "exclude_ids": str(tmp_path / "test.json")}}}, tmp_path)


# --- references and choices hold text -----------------------------------------------------------

@pytest.mark.parametrize("empty", ["", "  \n"])
def test_an_empty_reference_summary_is_refused_naming_file_and_line(tmp_path, empty):
    bills = jsonl(tmp_path / "bills.jsonl", [BILL, BILL, {**BILL, "summary": empty}])
    with pytest.raises(ConfigError, match=r"bills\.jsonl:3: field 'summary' is empty; a reference summary"):
        check_tasks({"billsum": {"path": str(bills)}}, tmp_path)  # was accepted (ROUGE 0 whatever the model)
    notes = jsonl(tmp_path / "notes.jsonl", [{"note": "n", "impression": empty}])
    with pytest.raises(ConfigError, match=r"notes\.jsonl:1: field 'impression' is empty"):
        check_tasks({"notes": {"kind": "summary", "path": str(notes),
                               "fields": {"source": "note", "summary": "impression"}}}, tmp_path)


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_choice_is_refused_naming_file_line_and_field(tmp_path, empty):
    cases = jsonl(tmp_path / "cases.jsonl", [CASE, {**CASE, "holding_3": empty}])
    with pytest.raises(ConfigError, match=r"cases\.jsonl:2: choice 'holding_3' is empty"):
        check_tasks({"casehold": {"path": str(cases)}}, tmp_path)  # was accepted, then failed in lm-eval
    with pytest.raises(ConfigError, match=r"cases\.jsonl:2: choice 'holding_3' is empty"):
        calib("casehold", cases)
    exam = jsonl(tmp_path / "exam.jsonl", [{"stem": "Pick", "options": ["x", empty], "gold": 0}])
    with pytest.raises(ConfigError, match=r"exam\.jsonl:1: choice 'options\[1\]' is empty"):
        check_tasks({"exam": {"kind": "choice", "path": str(exam),
                              "fields": {"prompt": "stem", "choices": "options", "label": "gold"}}}, tmp_path)


def test_a_non_string_choice_names_its_field(tmp_path):
    exam = jsonl(tmp_path / "exam.jsonl", [{"stem": "Pick", "options": ["x", 2], "gold": 0}])
    with pytest.raises(ConfigError, match=r"exam\.jsonl:1: choice 'options\[1\]' holds int '2'; expected"):
        check_tasks({"exam": {"kind": "choice", "path": str(exam),
                              "fields": {"prompt": "stem", "choices": "options", "label": "gold"}}}, tmp_path)


# --- a byte order mark is never text ------------------------------------------------------------

def test_a_byte_order_mark_is_dropped_in_raw_text(tmp_path):
    book = tmp_path / "book.txt"
    book.write_bytes(BOM + b"Chapter one.\r\nIt begins.\r\n")
    assert perplexity(book) == ["Chapter one.\nIt begins.\n"]  # the mark was scored as text


def test_a_byte_order_mark_is_dropped_in_json_lines(tmp_path):
    rows = [{"text": "first"}, {"text": "second"}]
    assert perplexity(jsonl(tmp_path / "ppl.jsonl", rows, BOM)) == ["first", "second"]
    bills = jsonl(tmp_path / "bills.jsonl", [BILL], BOM)
    assert docs("billsum", {"path": str(bills)}, tmp_path) == [{"id": "0", **BILL}]
    assert calib("billsum", bills) == [f"The text of a bill follows. {BILL['source']}\n"
                                       f"Summary of the bill: {BILL['summary']}"]


def test_a_byte_order_mark_is_dropped_in_xml_and_json(tmp_path):
    rqe = tmp_path / "test.xml"
    rqe.write_bytes(BOM + b'<?xml version="1.0" encoding="UTF-8"?>\n<set><pair pid="4" value="true">'
                          b"<chq> Is it contagious? </chq><faq>How does it spread?</faq></pair></set>\n")
    assert docs("rqe", {"path": str(rqe)}, tmp_path) == [
        {"id": "4", "chq": "Is it contagious?", "faq": "How does it spread?", "label": 0}]
    assert calib("rqe", rqe) == ["Question A: Is it contagious?\nQuestion B: How does it spread?\n"
                                 "Does an answer to question B also answer question A? Yes."]
    items, split = tmp_path / "ori_pqal.json", tmp_path / "test_ground_truth.json"
    entry = {"QUESTION": "Q?", "CONTEXTS": ["A.", "B."], "final_decision": "no", "LONG_ANSWER": "L."}
    items.write_bytes(BOM + json.dumps({"9": entry}).encode())
    split.write_bytes(BOM + b'{"9": "no"}')
    assert docs("pubmedqa", {"path": str(items), "split": str(split)}, tmp_path) == [
        {"id": "9", "question": "Q?", "context": "A. B.", "label": 1}]


# --- JSON lines end at "\n" only ----------------------------------------------------------------

@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_json_lines_split_on_newline_only(tmp_path, separator):
    """Python's str.splitlines also ends a line at these, which JSON holds unescaped in a string."""
    rows = [{"text": f"one{separator}line"}, {"text": "two"}]
    assert perplexity(jsonl(tmp_path / "ppl.jsonl", rows)) == [f"one{separator}line", "two"]
    bills = jsonl(tmp_path / "bills.jsonl", [{**BILL, "summary": f"Names{separator}it."}, BILL])
    assert docs("billsum", {"path": str(bills)}, tmp_path)[0]["summary"] == f"Names{separator}it."
    bad = jsonl(tmp_path / "bad.jsonl", [{"text": f"a{separator}b"}, {"text": "c"}, {"text": 3}])
    with pytest.raises(ConfigError, match=r"bad\.jsonl:3: field 'text'"):  # line numbers count "\n" only
        perplexity(bad)


def test_json_lines_with_windows_line_ends(tmp_path):
    rows = [{"text": "one"}, {"text": "two"}, {"text": None}]
    path = jsonl(tmp_path / "ppl.jsonl", rows[:2], end="\r\n")
    assert perplexity(path) == ["one", "two"]
    path.write_bytes(path.read_bytes() + b"\r\n" + json.dumps(rows[2]).encode() + b"\r\n")
    with pytest.raises(ConfigError, match=r"ppl\.jsonl:4: field 'text' holds NoneType"):
        perplexity(path)
