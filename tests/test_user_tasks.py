"""User tasks by kind (nli, yesno, choice, summary), eval validation before the model loads, and
perplexity that refuses to score nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from lm_eval.tasks import TaskManager
from omegaconf import OmegaConf

from core.data import PROJECT_ROOT, resolve_data_root
from core.errors import ConfigError
from core.items import NLI_LABELS
from core.models import load_model
from evals.lm_tasks import TASKS_DIR, check_tasks, evaluate_domain_tasks, lm_eval_spec, task_sources
from evals.perplexity import perplexity_settings, strided_perplexity
from evals.suite import check_eval_inputs, check_eval_settings
from evals.tasks.declarations import read_task

CONF = PROJECT_ROOT / "conf"
CLAIMS = ("{kind: nli, path: PATH, fields: {premise: context, hypothesis: statement, label: verdict}, "
          "labels: {true: entailment, false: contradiction, unknown: neutral}}")
NLI_ROWS = [("Patient denies chest pain.", "The patient has chest pain.", "contradiction"),
            ("BP 150/95.", "The patient is hypertensive.", "entailment"),
            ("Afebrile overnight.", "The patient will be discharged.", "neutral")]
VERDICT = {"contradiction": False, "entailment": True, "neutral": "Unknown"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def from_cli(override: str) -> dict:
    """A task spec exactly as Hydra parses `+domain.tasks.<name>=...` (YAML `true` keys are bools)."""
    return OverridesParser.create().parse_override(f"+domain.tasks.x={override}").value()


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "claims_test.jsonl", [
        {"id": f"c{i}", "context": p, "statement": h, "verdict": VERDICT[label]}
        for i, (p, h, label) in enumerate(NLI_ROWS)])


@pytest.fixture
def mednli(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "mli_test_v1.jsonl", [
        {"sentence1": p, "sentence2": h, "gold_label": label, "pairID": f"c{i}"}
        for i, (p, h, label) in enumerate(NLI_ROWS)])


def user_docs(name: str, spec: dict, root: Path) -> list[dict]:
    return read_task(name, task_sources({name: spec}, root)[name])


def test_user_nli_task_reads_as_mednli(claims, mednli, tmp_path):
    spec = from_cli(CLAIMS.replace("PATH", str(claims)))
    spec["fields"]["id"] = "id"
    docs = user_docs("claims", spec, tmp_path)
    assert docs == read_task("mednli", {"path": str(mednli)})
    assert [d["label"] for d in docs] == [1, 0, 2]  # entailment, contradiction, neutral


def test_user_task_takes_its_templates_prompt_choices_and_version(claims, mednli, tmp_path):
    tasks = {"mednli": {"path": str(mednli)}, "claims": from_cli(CLAIMS.replace("PATH", str(claims))),
             "notes": {"kind": "summary", "path": str(claims), "like": "hqs",
                       "fields": {"source": "context", "summary": "statement"}}}
    sources = task_sources(tasks, tmp_path)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"sources": sources})
    loaded = {name: manager.load([lm_eval_spec(name, source)])["tasks"][f"dpb_{name}"]
              for name, source in sources.items()}
    builtin, user = loaded["mednli"], loaded["claims"]
    assert user.get_config("metadata")["version"] == builtin.get_config("metadata")["version"] == 1.0
    for ours, theirs in zip(user.dataset["test"], builtin.dataset["test"], strict=True):
        assert user.doc_to_text(ours) == builtin.doc_to_text(theirs)
        assert user.doc_to_choice(ours) == builtin.doc_to_choice(theirs) == list(NLI_LABELS)
        assert user.doc_to_target(ours) == builtin.doc_to_target(theirs)
    notes = loaded["notes"]
    doc = notes.dataset["test"][0]
    assert notes.doc_to_text(doc) == ("A patient sent the following message.\n\n"
                                      f"Message: {NLI_ROWS[0][0]}\n\n"
                                      "In one short sentence, the patient's question is:")
    assert notes.doc_to_target(doc) == NLI_ROWS[0][1]


def test_kinds_map_fields_and_labels(tmp_path):
    yesno = write_jsonl(tmp_path / "qa.jsonl", [
        {"q": "Does X help?", "abstract": ["Part one.", "Part two."], "answer": "Y"},
        {"q": "Is Y safe?", "abstract": "One text.", "answer": "N"}])
    docs = user_docs("qa", {"kind": "yesno", "path": str(yesno), "labels": {"y": "yes", "n": "no"},
                            "fields": {"question": "q", "context": "abstract", "label": "answer"}}, tmp_path)
    assert docs[0] == {"id": "0", "question": "Does X help?", "context": "Part one. Part two.", "label": 0}
    assert docs[1]["label"] == 1

    exam = write_jsonl(tmp_path / "exam.jsonl", [{"stem": "2+2?", "a": "3", "b": "4", "c": "5", "key": "B"}])
    fields = {"prompt": "stem", "choices": ["a", "b", "c"], "label": "key"}
    labels = {"A": 0, "B": 1, "C": 2}
    spec = {"kind": "choice", "path": str(exam), "labels": labels, "fields": fields}
    docs = user_docs("exam", spec, tmp_path)
    assert docs == [{"id": "0", "prompt": "2+2?", "choices": ["3", "4", "5"], "label": 1}]

    listed = write_jsonl(tmp_path / "listed.jsonl", [{"stem": "Pick", "options": ["x", "y"], "gold": 1}])
    fields = {"prompt": "stem", "choices": "options", "label": "gold"}
    docs = user_docs("listed", {"kind": "choice", "path": str(listed), "fields": fields}, tmp_path)
    assert docs[0]["choices"] == ["x", "y"] and docs[0]["label"] == 1

    notes = write_jsonl(tmp_path / "notes.jsonl", [{"note": " Long note. ", "impression": "Short.\n"}])
    docs = user_docs("notes", {"kind": "summary", "path": str(notes),
                               "fields": {"source": "note", "summary": "impression"}}, tmp_path)
    assert docs == [{"id": "0", "source": "Long note.", "summary": "Short."}]


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "nlii"},
     r"domain\.tasks\.claims\.kind='nlii'; choose one of \['choice', 'nli', 'summary', 'yesno'\]"),
    ({"path": None}, r"domain\.tasks\.claims has no path"),
    ({"path": "nowhere/claims.jsonl"}, r"nowhere/claims\.jsonl' not found"),
    ({"fields": None},
     r"domain\.tasks\.claims\.fields=None; a nli task maps \['premise', 'hypothesis', 'label'\]"),
    ({"fields": {"premise": "context", "label": "verdict"}}, r"fields lacks \['hypothesis'\]"),
    ({"fields": {"premise": "context", "hypothesis": "statement", "label": "verdict", "gold": "x"}},
     r"unknown role\(s\) \['gold'\]"),
    ({"labels": {"true": "entails"}}, r"labels\.true='entails'; choose one of \['entailment'"),
    ({"like": "billsum"}, r"like='billsum'; choose one of \['mednli'\]"),
    ({"lables": {}}, r"unknown key\(s\) \['lables'\]"),
])
def test_bad_user_task_specs_name_the_value(claims, tmp_path, change, message):
    spec = {**from_cli(CLAIMS.replace("PATH", str(claims))), **change}
    with pytest.raises(ConfigError, match=message):
        check_tasks({"claims": spec}, tmp_path)


def test_bad_rows_name_file_line_and_value(claims, tmp_path):
    spec = from_cli(CLAIMS.replace("PATH", str(claims)))
    rows = [json.loads(line) for line in claims.read_text().splitlines()]
    rows[1]["verdict"] = "maybe"
    claims.write_text("\n".join(json.dumps(row) for row in rows[:1]) + "\n\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(ConfigError, match=r"claims_test\.jsonl:3 has label 'maybe'; labels maps only "
                                          r"\['true', 'false', 'unknown'\]"):
        check_tasks({"claims": spec}, tmp_path)
    del rows[1]["statement"]
    write_jsonl(claims, rows)
    with pytest.raises(ConfigError, match=r"claims_test\.jsonl:2 lacks field\(s\) \['statement'\]"):
        check_tasks({"claims": spec}, tmp_path)
    exam = write_jsonl(tmp_path / "exam.jsonl", [{"stem": "Pick", "options": ["x", "y"], "gold": 2}])
    with pytest.raises(ConfigError, match=r"exam\.jsonl:1 has label 2; expected a choice index 0\.\.1"):
        check_tasks({"exam": {"kind": "choice", "path": str(exam),
                              "fields": {"prompt": "stem", "choices": "options", "label": "gold"}}}, tmp_path)


def test_user_tasks_cannot_take_builtin_names_or_labels_for_summaries(mednli, tmp_path):
    with pytest.raises(ConfigError, match=r"'mednli' is a built-in task"):
        check_tasks({"mednli": {"kind": "nli", "path": str(mednli)}}, tmp_path)
    with pytest.raises(ConfigError, match="a summary task has no labels"):
        check_tasks({"s": {"kind": "summary", "path": str(mednli), "labels": {"a": "b"},
                           "fields": {"source": "sentence1", "summary": "sentence2"}}}, tmp_path)


def test_empty_and_non_utf8_task_files_fail_before_the_model(claims, tmp_path):
    spec = from_cli(CLAIMS.replace("PATH", str(claims)))
    claims.write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"claims_test\.jsonl has no items \(task claims\)"):
        check_tasks({"claims": spec}, tmp_path)
    casehold = tmp_path / "casehold.jsonl"
    casehold.write_text("")
    with pytest.raises(ConfigError, match=r"casehold\.jsonl has no items"):
        check_tasks({"casehold": {"path": str(casehold)}}, tmp_path)
    latin1 = b'{"context": "a", "statement": "b", "verdict": true}\n{"context": "caf\xe9"}\n'
    claims.write_bytes(latin1)
    offset = latin1.index(0xE9)
    with pytest.raises(ConfigError, match=rf"claims_test\.jsonl:2 is not UTF-8 \(byte offset {offset}:"):
        check_tasks({"claims": spec}, tmp_path)
    rqe = tmp_path / "test.xml"
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<set>\n<pair pid="1" value="true">'
           b"<chq>\xff</chq><faq>b</faq></pair></set>\n")
    rqe.write_bytes(xml)
    with pytest.raises(ConfigError, match=rf"test\.xml:3 is not UTF-8 \(byte offset {xml.index(0xFF)}"):
        check_tasks({"rqe": {"path": str(rqe)}}, tmp_path)
    rqe.write_text("<set><pair pid='1' value='true'><chq>a</chq></set>")
    with pytest.raises(ConfigError, match=r"test\.xml is not readable XML \(mismatched tag"):
        check_tasks({"rqe": {"path": str(rqe)}}, tmp_path)


def eval_cfg(**changes: dict) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "eval" / "quick.yaml"))
    for section, values in changes.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


@pytest.mark.parametrize(("changes", "context", "message"), [
    ({"perplexity": {"stride": 0}}, None, r"eval\.perplexity\.stride=0 must be >= 1"),
    ({"perplexity": {"stride": "abc"}}, None, r"eval\.perplexity\.stride='abc' must be a whole number"),
    ({"perplexity": {"stride": 1024}}, None, r"stride=1024 must be <= window \(512\)"),
    ({"perplexity": {"window": 1}}, None, r"window=1 must be >= 2"),
    ({}, 256, r"window=512 exceeds the model's context of 256 positions"),
    ({"perplexity": {"max_windows": 0}}, None, r"max_windows=0 must be >= 1"),
    ({"perplexity": {"batch_size": 0}}, None, r"perplexity\.batch_size=0 must be >= 1"),
    ({"tasks": {"batch_size": 0}}, None, r"tasks\.batch_size=0 must be >= 1"),
    ({"tasks": {"limit": {"casehold": 0}}}, None, r"eval\.tasks\.limit\.casehold=0 must be >= 1"),
    ({"tasks": {"limit": {"casehold": 2.5}}}, None, r"limit\.casehold=2\.5 must be a whole number"),
    ({"tasks": {"limit": {"casehld": 5}}}, None,
     r"eval\.tasks\.limit\.casehld: no such task; known: \['billsum', 'casehold', 'hqs', 'mednli'"),
    ({"tasks": {"max_new_tokens": {"hqs": 0}}}, None, r"max_new_tokens\.hqs=0 must be >= 1"),
    ({"tasks": {"max_new_tokens": {"claims": 8}}}, None, r"max_new_tokens\.claims: no such task"),
])
def test_check_eval_settings_rejects(changes, context, message):
    with pytest.raises(ConfigError, match=message):
        check_eval_settings(eval_cfg(**changes), context)


def test_check_eval_settings_accepts_presets_and_user_task_keys():
    for preset in ("smoke", "quick", "paper"):
        check_eval_settings(OmegaConf.load(CONF / "eval" / f"{preset}.yaml"), 2048)
    domain = {"name": "healthcare", "tasks": {"claims": {"kind": "nli"}}}
    user_keys = eval_cfg(tasks={"limit": {"claims": 20}, "max_new_tokens": {"claims": 8}})
    check_eval_settings(user_keys, None, domain)
    settings = perplexity_settings(eval_cfg()["perplexity"], 2048)
    assert (settings.window, settings.stride, settings.max_windows, settings.batch_size) == (512, 512, 16, 4)


def test_check_eval_inputs_reads_every_file_and_returns_them(tmp_path):
    root = resolve_data_root(None)
    config = OmegaConf.load(CONF / "config.yaml")
    legal = OmegaConf.load(CONF / "domain" / "legal.yaml")
    files = check_eval_inputs(legal, config.data.general, root)
    names = {path.relative_to(root).as_posix() for path in files}
    assert names == {"legal/multilegalpile/multilegalpile_300.jsonl", "general/wikitext2_test.raw",
                     "general/c4_validation_2k.jsonl", "legal/casehold/test.jsonl",
                     "legal/billsum/test_200.jsonl"}
    healthcare = OmegaConf.to_container(OmegaConf.load(CONF / "domain" / "healthcare.yaml"))
    assert root / "healthcare/pubmedqa/test_ground_truth.json" in check_eval_inputs(healthcare, {}, root)
    blank = tmp_path / "book.txt"
    blank.write_text(" \n\n")
    with pytest.raises(ConfigError, match=r"book\.txt has no text"):
        check_eval_inputs({"name": "legal", "perplexity": {"book": str(blank)}}, {}, root)


class CharTokenizer:
    """One token per character."""

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False):
        return {"input_ids": [ord(c) % 128 for c in text],
                "offset_mapping": [(i, i + 1) for i in range(len(text))]}


def test_perplexity_refuses_to_score_nothing(make_tiny):
    model = make_tiny("llama")
    with pytest.raises(ConfigError, match=r"general/x: the text is 1 token\(s\) long, so no token can be"):
        strided_perplexity(model, CharTokenizer(), ["a"], 8, 8, progress=False, label="general/x")
    ppl = strided_perplexity(model, CharTokenizer(), ["ab"], 8, 8, progress=False)
    assert ppl.tokens == 1 and ppl.windows == 1 and math.isfinite(ppl.ppl)


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model(OmegaConf.load(CONF / "model" / "tiny-llama.yaml"))


def test_user_tasks_of_every_kind_run_like_their_builtin(tiny_llama, claims, mednli, tmp_path):
    """Each kind runs with its template's prompt and metrics: the user nli task scores exactly as the
    built-in MedNLI on the same items; keys, items, limits and kinds land in the results."""
    model, tokenizer = tiny_llama
    options = ["yes it is", "no", "maybe so"]
    exam = write_jsonl(tmp_path / "exam.jsonl",
                       [{"stem": f"Question {i}?", "options": options, "gold": i % 3} for i in range(3)])
    notes = write_jsonl(tmp_path / "notes.jsonl",
                        [{"note": f"Note {i}.", "impression": "Fine."} for i in range(3)])
    qa = write_jsonl(tmp_path / "qa.jsonl",
                     [{"q": "Why?", "c": "Because.", "a": a} for a in ("yes", "no", "maybe")])
    tasks = {
        "mednli": {"path": str(mednli)},
        "claims": from_cli(CLAIMS.replace("PATH", str(claims))),
        "qa": {"kind": "yesno", "path": str(qa), "fields": {"question": "q", "context": "c", "label": "a"}},
        "exam": {"kind": "choice", "path": str(exam),
                 "fields": {"prompt": "stem", "choices": "options", "label": "gold"}},
        "notes": {"kind": "summary", "path": str(notes), "like": "hqs",
                  "fields": {"source": "note", "summary": "impression"}},
    }
    limits = {"batch_size": 1, "limit": {"mednli": 3, "hqs": 2, "exam": 2}, "max_new_tokens": {"hqs": 4}}
    result = evaluate_domain_tasks(model, tokenizer, tasks, limits, tmp_path, domain="clinic")
    for metric in ("acc", "macro_f1"):
        assert result.metrics[f"clinic/claims/{metric}"] == result.metrics[f"clinic/mednli/{metric}"]
    assert set(result.metrics) >= {"clinic/qa/acc", "clinic/exam/macro_f1", "clinic/notes/rougeLsum"}
    assert all(0.0 <= value <= 1.0 for value in result.metrics.values())
    assert result.items == {"clinic/mednli": 3, "clinic/claims": 3, "clinic/qa": 3, "clinic/exam": 2,
                            "clinic/notes": 2}  # qa: no limit of its own or pubmedqa's -> all items
    assert result.limits["clinic/notes"] == 2 and result.limits["clinic/qa"] is None
    assert result.kinds["clinic/notes"] == {"kind": "summary", "like": "hqs"}
    assert "clinic/mednli" not in result.kinds
    assert [s["reference"] for s in result.samples["clinic/notes"]] == ["Fine.", "Fine."]
