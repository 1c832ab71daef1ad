"""Domain tasks through lm-eval: offline loading, prompts, validation, prompt sharing, and a smoke
run of the real embedded model on both domains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from core.data import PROJECT_ROOT, resolve_data_root
from core.errors import ConfigError
from core.gguf_wheels import converted_dir
from core.items import TASK_KINDS
from core.models import load_model
from evals.lm_tasks import TASKS_DIR, check_tasks, evaluate_domain_tasks, task_sources
from evals.prefix_lm import FirstLineDone, PrefixSharingLM
from evals.tasks import declarations, utils
from evals.tasks.declarations import task_declarations, templates
from evals.tasks.utils import first_line

CONF = PROJECT_ROOT / "conf"
DOMAINS = ("healthcare", "legal")


def domain_tasks(domain: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "domain" / f"{domain}.yaml"))["tasks"]


@pytest.fixture(scope="module")
def root() -> Path:
    return resolve_data_root(None)


@pytest.fixture(scope="module")
def manager(root: Path, tmp_path_factory: pytest.TempPathFactory) -> TaskManager:
    mednli = tmp_path_factory.mktemp("mednli") / "mli_test_v1.jsonl"
    rows = [{"sentence1": "Patient denies chest pain.", "sentence2": "The patient has chest pain.",
             "gold_label": "contradiction", "pairID": "p1"},
            {"sentence1": "BP 150/95.", "sentence2": "The patient is hypertensive.",
             "gold_label": "entailment"}]
    mednli.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sources = {}
    for domain in DOMAINS:
        tasks = domain_tasks(domain)
        if domain == "healthcare":
            tasks["mednli"]["path"] = str(mednli)
        sources.update(task_sources(tasks, root))
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"sources": sources})


def first_doc(manager: TaskManager, name: str):
    task = manager.load([f"dpb_{name}"])["tasks"][f"dpb_{name}"]
    return task, task.dataset["test"][0]


FIRST_PROMPTS = {  # task: (items, the first doc's prompt, its target)
    "rqe": (230, "Say true if an answer to the frequently asked question would also answer the patient's "
            "question, at least in part, and false otherwise.\n\n"
            "Patient's question: atypical pnuemonia.    what is the possibility of atypical pneumonia "
            "occurring again less than a month after treatment?\n"
            "Frequently asked question: What are the possible treatments for atypical pneumonia ?\nAnswer:",
            1),  # value="false"
    "hqs": (100, "A patient sent the following message.\n\nMessage: 23 surgeries and counting......lower lip "
            "birthmark, have tried all options out the there and guess what still have it, continues to grow "
            "back.....any suggestions? Is there a cure coming in the next few years hopefully?\n\n"
            "In one short sentence, the patient's question is:",
            "How can i get rid of a lower lip birthmark permanently?"),
}


@pytest.mark.parametrize("name", sorted(FIRST_PROMPTS))
def test_first_prompt(manager, name):
    items, prompt, target = FIRST_PROMPTS[name]
    task, doc = first_doc(manager, name)
    assert len(task.dataset["test"]) == items
    assert task.doc_to_text(doc) == prompt
    assert task.doc_to_target(doc) == target
    if name == "rqe":
        assert task.doc_to_choice(doc) == ["true", "false"]


def test_pubmedqa_prompt_and_order(manager):
    task, doc = first_doc(manager, "pubmedqa")
    docs = task.dataset["test"]
    assert len(docs) == 500 and doc["id"] == "21645374"
    text = task.doc_to_text(doc)
    assert text.startswith("Read the abstract of a biomedical study and answer the research question with "
                           "yes, no or maybe.\n\nAbstract: Programmed cell death (PCD) is the regulated")
    assert text.endswith("\nQuestion: Do mitochondria play a role in remodelling lace plant leaves during "
                         "programmed cell death?\nAnswer:")
    assert task.doc_to_choice(doc) == ["yes", "no", "maybe"]
    assert len(set(docs["label"][:10])) == 3  # ori_pqal order: small subsets see every answer


def test_mednli_from_a_user_file(manager):
    task, doc = first_doc(manager, "mednli")
    assert task.doc_to_text(doc).endswith(
        "Clinical note: Patient denies chest pain.\nHypothesis: The patient has chest pain.\nAnswer:")
    assert task.doc_to_choice(doc)[task.doc_to_target(doc)] == "contradiction"


PROMPT_ENDS = {  # task: (items, how the first doc's prompt starts, how it ends)
    "casehold": (200, "Read the excerpt from a court opinion and state the holding of the case cited "
                 "where it says <HOLDING>.\n\nExcerpt: legal remedy. Riverwoods, L.L.C.",
                 "the 2004 habeas petition became\nCited holding:"),
    "billsum": (200, "Read the text of a United States bill and summarize what it does in a few sentences."
                "\n\nBill: To provide for reliquidation of entries prematurely", "\nSummary:"),
}


@pytest.mark.parametrize("name", sorted(PROMPT_ENDS))
def test_legal_prompts(manager, name):
    items, start, end = PROMPT_ENDS[name]
    task, doc = first_doc(manager, name)
    assert len(task.dataset["test"]) == items
    text = task.doc_to_text(doc)
    assert text.startswith(start) and text.endswith(end)


def test_casehold_choices_and_billsum_target(manager):
    task, doc = first_doc(manager, "casehold")
    choices = task.doc_to_choice(doc)
    assert len(choices) == 5 and task.doc_to_target(doc) == 2
    assert choices[2] == "holding a party seeking mandamus must serve the party against whom relief is sought"
    task, doc = first_doc(manager, "billsum")
    assert task.doc_to_target(doc).startswith("Requires the Customs Service to reliquidate certain entries")


def test_mednli_is_skipped_without_a_path(root):
    assert "mednli" not in task_sources(domain_tasks("healthcare"), root)


def test_check_tasks_names_missing_and_malformed_files(root, tmp_path):
    for domain in DOMAINS:
        check_tasks(domain_tasks(domain), root)
    with pytest.raises(ConfigError, match="nowhere.xml"):
        check_tasks({"rqe": {"path": "healthcare/rqe/nowhere.xml"}}, root)
    bad = tmp_path / "casehold.jsonl"
    bad.write_text(json.dumps({"citing_prompt": "x", "label": 0}) + "\n")
    with pytest.raises(ConfigError, match=r"casehold.jsonl:1 lacks field.*holding_0"):
        check_tasks({"casehold": {"path": str(bad)}}, root)
    with pytest.raises(ConfigError, match="unknown task 'medqa'"):
        check_tasks({"medqa": {"path": "x"}}, root)


def test_each_declared_task_is_listed_by_its_domain_and_reads_as_its_kind(manager):
    declared = task_declarations()
    assert sorted(declared) == sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))
    for name, task in declared.items():
        assert name in domain_tasks(task.domain)
        docs = manager.load([f"dpb_{name}"])["tasks"][f"dpb_{name}"].dataset["test"]
        if task.kind:
            assert set(docs.column_names) == {"id", *TASK_KINDS[task.kind].roles}
    assert templates("summary") == ["billsum", "hqs"] and templates("nli") == ["mednli"]


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
    """A copy of the task YAMLs that declarations reads instead of the project's."""
    for path in TASKS_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(declarations, "TASKS_DIR", tmp_path)
    task_declarations.cache_clear()
    yield tmp_path
    task_declarations.cache_clear()


def test_a_new_task_is_one_yaml(tasks_dir, root):
    """A YAML naming a known format is a task: declared, with its hook, and a template of its kind."""
    yaml_text = (tasks_dir / "hqs.yaml").read_text(encoding="utf-8").replace("hqs", "meqsum_test")
    (tasks_dir / "meqsum_test.yaml").write_text(yaml_text, encoding="utf-8")
    assert task_declarations()["meqsum_test"].kind == "summary"
    assert templates("summary") == ["billsum", "hqs", "meqsum_test"]
    spec = {"path": str(root / "healthcare/hqs/mediqa2021_test.jsonl")}
    docs = utils.meqsum_test_docs(sources={"meqsum_test": spec})["test"]
    assert len(docs) == 100
    assert docs[0]["summary"] == FIRST_PROMPTS["hqs"][2]  # hqs's first target: the same file, read alike


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text, r"rqe2\.yaml: a task YAML is named after its task: task: dpb_rqe2"),
    (lambda text: text.replace("dpb_rqe", "dpb_rqe2").replace("utils.rqe_docs", "utils.rqe2_docs")
     .replace("format: rqe", "format: xml"), r"rqe2\.yaml: metadata\.format='xml'; choose one of"),
    (lambda text: text.replace("dpb_rqe", "dpb_rqe2").replace("utils.rqe_docs", "utils.rqe2_docs")
     .replace("  domain: healthcare\n", ""), r"rqe2\.yaml: metadata\.domain=None"),
])
def test_a_bad_declaration_names_its_yaml(tasks_dir, edit, message):
    (tasks_dir / "rqe2.yaml").write_text(edit((tasks_dir / "rqe.yaml").read_text(encoding="utf-8")))
    with pytest.raises(ConfigError, match=message):
        task_declarations()


def test_each_kind_has_one_default_template(tasks_dir):
    hqs = tasks_dir / "hqs.yaml"
    hqs.write_text(hqs.read_text(encoding="utf-8") + "  like_default: true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"the summary tasks .* mark \['billsum', 'hqs'\] like_default"):
        task_declarations()


def test_first_line():
    assert first_line("\n\n Asks about X.\nMore text") == "Asks about X."
    assert first_line("  ") == ""


@pytest.fixture(scope="module")
def tokenizer():
    cfg = OmegaConf.load(CONF / "model" / "smollm2-135m.yaml")
    return AutoTokenizer.from_pretrained(converted_dir(cfg))


def test_first_line_stopping(tokenizer):
    prompt = tokenizer("Summary:", return_tensors="pt").input_ids
    done = FirstLineDone(tokenizer, prompt.shape[1])
    rows = [tokenizer("Summary:\n\nThe bill", return_tensors="pt").input_ids,
            tokenizer("Summary: The bill.\nIt", return_tensors="pt").input_ids]
    width = max(r.shape[1] for r in rows)
    batch = torch.stack([torch.nn.functional.pad(r[0], (0, width - r.shape[1]), value=0) for r in rows])
    assert done(batch, None).tolist() == [False, True]


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2", "opt", "gpt2"])
def test_shared_prompt_scores_equal_lm_eval(family, make_tiny, tokenizer):
    """One prompt pass + cached candidates gives lm-eval's own numbers (contexts longer than the
    sliding window, candidates of 1..6 tokens)."""
    model = make_tiny(family)
    generator = torch.Generator().manual_seed(1)
    requests = []
    for _ in range(3):
        context = torch.randint(1, 128, (20,), generator=generator).tolist()
        for length in (1, 3, 6):
            requests.append((None, context, torch.randint(1, 128, (length,), generator=generator).tolist()))
    reference = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal")._loglikelihood_tokens(
        requests, disable_tqdm=True)
    shared = PrefixSharingLM(pretrained=model, tokenizer=tokenizer, backend="causal")._loglikelihood_tokens(
        requests, disable_tqdm=True)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(shared, reference, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy


@pytest.fixture(scope="module")
def real_model():
    return load_model(OmegaConf.load(CONF / "model" / "smollm2-135m.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("domain", DOMAINS)
def test_smoke_on_the_real_model(domain, real_model, root):
    model, tokenizer = real_model
    tasks = OmegaConf.load(CONF / "domain" / f"{domain}.yaml").tasks  # as run.py passes them
    limits = OmegaConf.load(CONF / "eval" / "smoke.yaml").tasks
    result = evaluate_domain_tasks(model, tokenizer, tasks, limits, root)
    rouge = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    expected = {"healthcare": {"pubmedqa": ("acc", "macro_f1"), "rqe": ("acc", "macro_f1"), "hqs": rouge},
                "legal": {"casehold": ("acc", "macro_f1"), "billsum": rouge}}
    keys = {f"{domain}/{task}/{metric}" for task, metrics in expected[domain].items() for metric in metrics}
    assert set(result.metrics) == keys
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in result.metrics.values())
    for task in expected[domain]:
        key = f"{domain}/{task}"
        assert result.items[key] == limits["limit"][task] == result.limits[key]
        assert result.seconds[key] > 0 and result.versions[key] == 1.0
    generated = [k for k in result.samples]
    assert generated == [f"{domain}/{t}" for t in expected[domain] if t in ("hqs", "billsum")]
    for samples in result.samples.values():
        assert samples and all({"id", "prediction", "reference", "rouge1"} <= set(s) for s in samples)
