"""Domain calibration sets: templates, exclusion of every test item, windows, mixing."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from core.calibration import (
    WindowRequest,
    build_calibration,
    calibration_files,
    calibration_settings,
    domain_windows,
    general_windows,
    mixed_windows,
    token_stream,
)
from core.data import load_texts, read_jsonl, resolve_data_root
from core.domain_texts import (
    billsum_text,
    casehold_text,
    domain_texts,
    medquad_text,
    meqsum_text,
    pubmedqa_text,
    rqe_text,
)
from core.errors import ConfigError
from core.models import load_tokenizer
from core.paths import PROJECT_ROOT

ROOT = resolve_data_root(None)


def calib_cfg(domain: str, **limits):
    """A domain's `calib` block, with per-source limits replaced (None: every item; 0: the
    source left out, as `~domain.calib.sources.<name>` leaves it out of a run)."""
    cfg = OmegaConf.load(PROJECT_ROOT / f"conf/domain/{domain}.yaml")
    for source, limit in limits.items():
        if limit == 0:
            del cfg.calib.sources[source]
        else:
            cfg.calib.sources[source].limit = limit
    return cfg.calib


@pytest.fixture(scope="module")
def healthcare() -> list[str]:
    return domain_texts(calib_cfg("healthcare", rqe=None, medquad=None), ROOT)


@pytest.fixture(scope="module")
def legal() -> list[str]:
    return domain_texts(calib_cfg("legal"), ROOT)


@pytest.fixture(scope="module")
def tokenizer():
    model_cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny-llama.yaml")
    return load_tokenizer(model_cfg.tokenizer_from)


def test_pubmedqa_uses_the_500_non_test_ids_only(healthcare):
    items = json.loads((ROOT / "healthcare/pubmedqa/ori_pqal.json").read_text())
    test = json.loads((ROOT / "healthcare/pubmedqa/test_ground_truth.json").read_text())
    texts = set(healthcare)
    assert sum(pubmedqa_text(item) in texts for key, item in items.items() if key not in test) == 500
    assert not any(pubmedqa_text(items[key]) in texts for key in test)


def test_medquad_calibration_leaves_out_every_text_the_perplexity_scores(healthcare):
    """The held-out slice is what the domain perplexity reads (through its own reader): no
    calibration text answers with one of its texts, and every other row is kept, in order."""
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/domain/healthcare.yaml")
    slice_texts = load_texts(cfg.perplexity.medquad, ROOT)
    scored = set(slice_texts)
    rows = read_jsonl(ROOT / cfg.calib.sources.medquad.path)
    kept = [row for row in rows if row["answer"] not in scored]
    assert [t for t in healthcare if t.startswith("Question: ")] == [medquad_text(row) for row in kept]
    assert sum(row["answer"] in scored for row in rows) > len(slice_texts)  # repeats outside it exist
    spaced = {" ".join(text.split()) for text in scored}
    assert not any(" ".join(row["answer"].split()) in spaced for row in kept)  # nor spacing variants


def test_no_item_of_any_test_split(healthcare, legal):
    texts = set(healthcare) | set(legal)
    for row in read_jsonl(ROOT / "legal/casehold/test.jsonl"):
        assert casehold_text(row) not in texts
    for row in read_jsonl(ROOT / "legal/billsum/test_200.jsonl"):
        assert billsum_text(row) not in texts
    for row in read_jsonl(ROOT / "healthcare/hqs/mediqa2021_test.jsonl"):
        assert meqsum_text(row) not in texts
    for pair in ET.parse(ROOT / "healthcare/rqe/test.xml").getroot().iter("pair"):
        for entails in (True, False):
            assert rqe_text(pair.findtext("chq"), pair.findtext("faq"), entails) not in texts
    prompts = [row["citing_prompt"].split("<HOLDING>")[0][-200:] for row in read_jsonl(
        ROOT / "legal/casehold/test.jsonl")]
    assert not any(p and p in t for p in prompts[:50] for t in legal)


def test_sizes_and_templates(healthcare, legal):
    assert len(legal) == 2000 + 200
    assert sum(t.startswith("Context: ") for t in healthcare) == 500
    assert sum(t.startswith("A patient asks: ") for t in healthcare) == 1000
    assert sum(t.startswith("Question A: ") for t in healthcare) == 8588
    assert all("<HOLDING>" not in t for t in legal)
    row = read_jsonl(ROOT / "legal/casehold/train.jsonl")[0]
    assert row[f"holding_{row['label']}"].split()[-1] in casehold_text(row)
    pubmedqa = next(t for t in healthcare if t.startswith("Context: "))
    assert any(f"The answer is {a}." in pubmedqa for a in ("yes", "no", "maybe"))


def test_limit_spreads_evenly():
    every = domain_texts(calib_cfg("healthcare", pubmedqa=0, meqsum=0, rqe=0, medquad=None), ROOT)
    texts = domain_texts(calib_cfg("healthcare", pubmedqa=None, meqsum=10, rqe=0, medquad=5), ROOT)
    assert len(texts) == 500 + 10 + 0 + 5
    assert texts[-5:] == [every[i * len(every) // 5] for i in range(5)]  # not the first five rows


def test_windows_are_seeded(tokenizer):
    cfg = calib_cfg("legal")
    cfg.max_tokens = 30_000
    a = domain_windows(tokenizer, cfg, ROOT, 4, 64, seed=0)
    assert a.shape == (4, 64) and a.dtype == torch.long
    assert torch.equal(a, domain_windows(tokenizer, cfg, ROOT, 4, 64, seed=0))
    assert not torch.equal(a, domain_windows(tokenizer, cfg, ROOT, 4, 64, seed=1))


def test_mixed_windows():
    general, domain = torch.zeros(8, 5, dtype=torch.long), torch.ones(8, 5, dtype=torch.long)
    mixed = mixed_windows(general, domain, 0.25)
    assert mixed.shape == (8, 5) and mixed[:2].eq(1).all() and mixed[2:].eq(0).all()
    assert torch.equal(mixed_windows(general, domain, 0.0), general)
    assert torch.equal(mixed_windows(general, domain, 1.0), domain)
    with pytest.raises(ConfigError):
        mixed_windows(general, domain, 1.5)
    with pytest.raises(ConfigError):
        mixed_windows(general, torch.ones(8, 4, dtype=torch.long), 0.5)


def test_bad_sources_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="format"):
        domain_texts({"sources": {"x": {"format": "nope", "path": "a"}}}, ROOT)
    with pytest.raises(ConfigError, match="not found"):
        domain_texts({"sources": {"casehold": {"path": "legal/casehold/missing.jsonl"}}}, ROOT)
    with pytest.raises(ConfigError, match="empty"):
        domain_texts({"sources": {}}, ROOT)


def test_requests_build_the_windows_files_and_key_settings(tokenizer):
    """One request per slot: the same windows as the window builders, the files they read, and
    only the calib settings they were made from."""
    config = OmegaConf.load(PROJECT_ROOT / "conf/config.yaml")
    general_spec, domain_calib = config.data.general.calib, calib_cfg("legal")
    calib = {"source": "mixed", "nsamples": 4, "seqlen": 32, "mix": 0.5}
    requests = {"ids": WindowRequest.from_calib(calib),
                "domain": WindowRequest("domain", 3, 16)}
    built = build_calibration(requests, tokenizer, general_spec, domain_calib, ROOT, seed=1)
    general = general_windows(tokenizer, general_spec, ROOT, 4, 32, 1)
    domain = domain_windows(tokenizer, domain_calib, ROOT, 4, 32, 1)
    assert torch.equal(built.ids, mixed_windows(general, domain, 0.5))
    assert torch.equal(built["domain"], domain_windows(tokenizer, domain_calib, ROOT, 3, 16, 1))
    assert "general" not in built
    files = {p.name for p in calibration_files(requests, general_spec, domain_calib, ROOT)}
    assert files == {"c4_train_shard00000_first1000.jsonl", "train.jsonl", "calibration_200.jsonl"}
    assert calibration_settings(requests, calib) == calib
    assert calibration_settings({"domain": requests["domain"]}, calib) is None
    with pytest.raises(ConfigError, match="calib.source='c4'"):
        WindowRequest.from_calib({**calib, "source": "c4"})
    with pytest.raises(ConfigError, match="whole number|numbers"):
        WindowRequest.from_calib({**calib, "nsamples": "abc"})


def test_token_stream_equals_one_call_per_document(tokenizer, legal):
    """Chunked tokenization gives the ids of tokenizing each document alone, EOS after each."""
    texts = legal[:150]
    expected = [i for text in texts for i in (*tokenizer(text, add_special_tokens=False).input_ids,
                                              tokenizer.eos_token_id)]
    assert token_stream(tokenizer, texts, chunk=64).tolist() == expected
    budget = len(expected) // 2
    cut = token_stream(tokenizer, texts, max_tokens=budget, chunk=7).tolist()
    assert len(cut) >= budget and cut == expected[: len(cut)] and cut[-1] == tokenizer.eos_token_id
