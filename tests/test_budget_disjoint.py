"""At the budget preset's largest level, the calibration windows never hold an evaluated text or
task item: every window is drawn from the domain's calibration stream, and no evaluated document
or item stands whole in that stream. (Stock phrases do recur across documents -- a bill's
enacting clause, MedQuAD's notes on clinical trials -- so shared stretches of a sentence or two
are expected and counted, not failed.) The preset reads the domain texts without the items that
hold an evaluated item (`domain.calib.exclude_evaluated`); the rule itself and the key of the
setting left at false are checked on small cases."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bench.perf.cell import bench_cell
from bench.results.records import cell_config, record_key
from core.calibration import (
    WindowRequest,
    build_calibration,
    calibration_budget,
    domain_stream,
    domain_windows,
    sample_windows,
)
from core.data import load_texts
from core.domain_texts import domain_texts
from core.evaluated import EvaluatedTexts
from core.models import load_tokenizer
from core.paths import CONF_DIR, PROJECT_ROOT
from evals.lm_tasks import task_sources
from evals.perplexity import perplexity_sources
from evals.tasks.declarations import read_task
from tests.test_grid import expand

SHORTEST = 80  # characters: shorter texts (a label, a title) are no evidence either way


def normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def long_texts(value: object) -> list[str]:
    """Every long text of an evaluated document or item, whitespace folded (an item is drawn when
    all of them stand in the stream: a CaseHOLD holding or an RQE question alone recurs by design)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in long_texts(v)]
    if isinstance(value, list):
        return [s for v in value for s in long_texts(v)]
    text = normal(value) if isinstance(value, str) else ""
    return [text] if len(text) >= SHORTEST else []


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["legal", "healthcare"])
def test_largest_budget_draws_no_evaluated_text(domain: str) -> None:
    largest = max((job for job in expand("budget", f"domain={domain}") if "pruner=dpruner" in job
                   and "pruner.domain_calib.nsamples=4096" in job), key=len)
    cfg, cell = bench_cell([o for o in largest if not o.startswith("+experiment")])
    tokenizer = load_tokenizer(cfg.model)
    calibration = cell.calibration(tokenizer)
    windows, seqlen = calibration["domain"], cfg.pruner.domain_calib.seqlen
    assert windows.shape == (4096, seqlen)
    texts = domain_texts(cell.domain_calib, cell.data_root, cell.evaluated)
    assert calibration.excluded["domain"] == texts.dropped and cell.evaluated is not None
    stream = domain_stream(tokenizer, texts, cell.domain_calib, seqlen, cell.seed)
    assert torch.equal(windows, sample_windows(stream, 4096, seqlen, cell.seed))  # drawn from it alone
    text = normal(tokenizer.decode(stream.tolist()))
    evaluated = [[s] for spec in perplexity_sources(cfg.domain, cfg.data.general).values()
                 if not spec.get("path", "").startswith("general/")
                 for s in long_texts(load_texts(spec, cell.data_root))]
    for name, source in task_sources(cfg.domain.tasks, cell.data_root).items():
        evaluated += [texts for item in read_task(name, source) if (texts := long_texts(item))]
    assert len(evaluated) > 300
    drawn = [" | ".join(texts) for texts in evaluated if all(s in text for s in texts)]
    assert not drawn, f"{len(drawn)} evaluated texts whole in the calibration stream: {drawn[0][:99]!r}"


def sentence(word: str) -> str:
    """A text well over SHORTEST characters, distinct per word."""
    return f"The {word} clause of the agreement applies to every party named in section {word} below."


def test_an_item_holding_an_evaluated_item_is_left_out_and_nothing_else() -> None:
    """An evaluated item stands in the calibration when each of its long texts is held by some
    calibration item (whitespace and case folded); every holder of a standing item's text goes,
    the rest stays in order. A long text recurring without its item's other one, a short text,
    and a calibration text that the evaluated one holds (the other direction) leave items in."""
    alone, first, second, half, other = (sentence(w) for w in ("alpha", "beta", "gamma", "delta", "omega"))
    evaluated = EvaluatedTexts([[normal(alone)], [normal(first), normal(second)],
                                [normal(half), normal(other)]])
    sources = {
        "a": ["nothing evaluated here " * 5, f"Intro. {alone.upper().replace(' ', chr(10) + '  ')} Outro.",
              f"Only half an item: {half}", alone[:60], "short: the alpha clause"],
        "b": [f"({first})", "another plain text " * 5, f"{second} and more", alone[10:]],
    }
    kept, dropped = evaluated.exclude(sources)
    assert kept == {"a": [sources["a"][0], sources["a"][2], sources["a"][3], sources["a"][4]],
                    "b": [sources["b"][1], sources["b"][3]]}
    assert dropped == {"a": 1, "b": 2}
    without_second = {"b": sources["b"][:2]}  # the first text alone: its item does not stand
    assert evaluated.exclude(without_second) == (without_second, {"b": 0})


@pytest.fixture
def bills(tmp_path: Path) -> dict:
    """A calibration source of three bills under `tmp_path` (its `domain.calib`)."""
    rows = [{"source": sentence(word), "summary": f"A bill on {word}."} for word in ("one", "two", "three")]
    (tmp_path / "bills.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {"sources": {"bills": {"format": "billsum", "path": "bills.jsonl"}}}


def test_domain_texts_without_evaluated_items_keep_the_rest_in_order(bills: dict, tmp_path: Path) -> None:
    every = domain_texts(bills, tmp_path)
    texts = domain_texts(bills, tmp_path, EvaluatedTexts([[normal(sentence("two"))]]))
    assert texts == [every[0], every[2]] and texts.dropped == {"bills": 1} and every.dropped == {}


def test_windows_come_from_the_kept_texts_and_the_budget_says_what_was_left_out(bills: dict,
                                                                                 tmp_path: Path) -> None:
    tokenizer = load_tokenizer(OmegaConf.load(CONF_DIR / "model" / "tiny-llama.yaml").tokenizer_from)
    requests = {"domain": WindowRequest("domain", 4, 16), "again": WindowRequest("domain", 4, 16)}
    evaluated = EvaluatedTexts([[normal(sentence("two"))]])
    calibration = build_calibration(requests, tokenizer, {}, bills, tmp_path, 0, evaluated)
    kept = domain_texts(bills, tmp_path, evaluated)
    assert torch.equal(calibration["domain"], domain_windows(tokenizer, bills, tmp_path, 4, 16, 0, kept))
    assert calibration["again"] is calibration["domain"]
    windows = calibration_budget(requests, calibration)["windows"]
    assert windows["domain"]["excluded"] == windows["again"]["excluded"] == {"bills": 1}
    plain = build_calibration(requests, tokenizer, {}, bills, tmp_path, 0)
    assert not torch.equal(plain["domain"], calibration["domain"])
    assert "excluded" not in calibration_budget(requests, plain)["windows"]["domain"]


def test_exclusion_at_false_keeps_every_committed_key() -> None:
    """`domain.calib.exclude_evaluated=false` leaves every committed record's key as stored (those
    written before the setting have none); the other value gives another key."""
    paths = sorted((PROJECT_ROOT / "results/leaderboard/records").glob("*.json"))
    assert paths
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        keys, stored = [], record["config"]["domain"]["calib"].get("exclude_evaluated", False)
        for setting in (stored, not stored):
            config = copy.deepcopy(record["config"])
            config["domain"]["calib"]["exclude_evaluated"] = setting
            keys.append(record_key(cell_config(config, dense=record["cell"]["pruner"] == "dense",
                                               sparsity=config["sparsity"], pattern=config["pattern"],
                                               calib=config.get("calib"),
                                               allocation=config.get("allocation", "uniform"))))
        assert keys[0] == record["key"] != keys[1], path.name
