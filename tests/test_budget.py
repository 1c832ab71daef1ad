"""Budgets: a cell's record states the calibration it consumed, counted from the windows it drew
(checked against an independent count of those windows, drawn again and recognised by content)
and D-Pruner's optimizer steps against the steps its domain pass takes; an older record's budget
derived from its config; the leaderboard's budget views from synthetic records of known values."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

from bench.cell import validate
from bench.defaults import compose_config
from bench.leaderboard.__main__ import main
from bench.leaderboard.budget import derived_budget, panels, pareto, record_budget, retention
from bench.leaderboard.cells import read_cells
from bench.results.records import save_record
from core import distributed
from core.calibration import Calibration, ExampleWindows, domain_windows, general_windows
from core.models import load_model
from core.paths import PROJECT_ROOT
from pruners import build
from pruners.dpruner import domain
from tests.test_leaderboard_uncertainty import perplexity, record

COMMITTED = PROJECT_ROOT / "results" / "leaderboard" / "records"
TINY = ["model=tiny-llama", "eval=smoke", "driver.progress=false", "logger=none"]


def drawn_tokens(cell, tokenizer) -> dict[str, int]:
    """An independent count: the cell's windows drawn again, each distinct set once (by content),
    each window a domain one where it is among the domain windows drawn on their own."""
    sets: list[torch.Tensor] = []
    for windows in cell.calibration(tokenizer).values():
        if not any(windows.shape == s.shape and torch.equal(windows, s) for s in sets):
            sets.append(windows)
    domain_rows = set()
    for request in cell.requests.values():
        if "domain" in request.texts:
            drawn = domain_windows(tokenizer, cell.domain_calib, cell.data_root, request.nsamples,
                                   request.seqlen, cell.seed)
            domain_rows |= {tuple(row) for row in drawn.tolist()}
    rows = [tuple(row) for s in sets for row in s.tolist()]
    domain_tokens = sum(len(row) for row in rows if row in domain_rows)
    return {"general": sum(map(len, rows)) - domain_tokens, "domain": domain_tokens}


def run_in_process(overrides: list[str], results: Path) -> tuple[dict, object, object]:
    """run.py's cell work (run_cell) on a composed config: (record, cell, tokenizer)."""
    from run import run_cell

    cfg = compose_config([*TINY, *overrides, f"results.dir={results}"])
    cell = validate(cfg)
    path = run_cell(cfg, cell, distributed.World())
    _, tokenizer = load_model(cfg.model)
    return json.loads(Path(path).read_text()), cell, tokenizer


@pytest.mark.slow
def test_wanda_mixed_record_states_its_tokens(tmp_path: Path) -> None:
    record_, cell, tokenizer = run_in_process(
        ["pruner=wanda", "calib=mixed", "calib.nsamples=5", "calib.seqlen=32", "calib.mix=0.4"], tmp_path)
    budget = record_["budget"]
    assert budget["tokens"] == drawn_tokens(cell, tokenizer) == {"general": 3 * 32, "domain": 2 * 32}
    assert budget["windows"] == {"ids": {"source": "mixed", "windows": 5, "seqlen": 32, "domain_windows": 2}}
    assert budget["passes"] == {"general": 1, "domain": 1} and budget["optimizer_steps"] is None
    assert budget["prune_seconds"] == record_["prune"]["seconds"]
    assert budget["peak_memory_mb"] == record_["memory"]["peak_rss_mb"] and budget["derived"] is False


@pytest.mark.slow
def test_dpruner_record_states_tokens_and_the_steps_it_took(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """5 domain windows in batches of 2 (the last one short) over 2 epochs: 6 SGD steps, counted
    as the update passes the trajectory really hands to the backward loop."""
    taken = []
    real_passes = domain.Trajectory.passes

    def counted(self, step):
        for current in real_passes(self, step):
            yield current
            taken.append(current.update)

    monkeypatch.setattr(domain.Trajectory, "passes", counted)
    record_, cell, tokenizer = run_in_process(
        ["pruner=dpruner", "calib.nsamples=3", "calib.seqlen=32", "pruner.domain_calib.nsamples=5",
         "pruner.domain_calib.seqlen=16", "pruner.batch_size=2", "pruner.epochs=2"], tmp_path)
    budget = record_["budget"]
    assert budget["tokens"] == drawn_tokens(cell, tokenizer) == {"general": 3 * 32, "domain": 5 * 16}
    assert budget["optimizer_steps"] == sum(taken) == 6
    assert budget["passes"] == {"general": 1, "domain": 2}
    assert budget["windows"]["domain"] == {"source": "domain", "windows": 5, "seqlen": 16,
                                           "domain_windows": 5}
    general = general_windows(tokenizer, cell.general_calib, cell.data_root, 3, 32, cell.seed)
    assert torch.equal(cell.calibration(tokenizer)["general"], general)  # the windows counted are these


def committed(key: str) -> dict:
    return json.loads((COMMITTED / f"{key}.json").read_text(encoding="utf-8"))


def test_whole_example_windows_count_their_real_tokens_and_steps() -> None:
    """The released recipe's windows (every example, nsamples null): tokens are the examples'
    own (no padding), steps come from the examples drawn (7 in batches of 2: 4 a pass)."""
    lengths = torch.tensor([5, 3, 8, 1, 2, 6, 4])
    windows = ExampleWindows(torch.zeros(7, 8, dtype=torch.long), lengths)
    pruner = build("dpruner", importance="domain_only", batch_size=2, epochs=3,
                   domain_calib={"nsamples": None, "seqlen": 8, "windows": "whole_examples"})
    requests = pruner.calibration_requests({"source": "general", "nsamples": 4, "seqlen": 8})
    assert requests["domain"].nsamples is None
    budget = pruner.budget(requests, Calibration(domain=windows))
    assert budget["tokens"] == {"general": 0, "domain": 29}
    assert budget["windows"]["domain"]["windows"] == 7
    assert budget["passes"]["domain"] == 3 and budget["optimizer_steps"] == 4 * 3


def test_an_old_record_gets_its_budget_from_its_config() -> None:
    """D-Pruner with two epochs (32 domain windows of 256 tokens, batches of 4): 16 steps; D-Pruner
    with OWL and mixed reconstruction: the OWL and reconstruction windows are one set, counted once."""
    epochs = committed("70688a70243a872e")
    assert "budget" not in epochs
    budget = record_budget(epochs)
    assert budget["derived"] is True
    assert budget["tokens"] == {"general": 32 * 512, "domain": 32 * 256}
    assert budget["passes"] == {"general": 1, "domain": 2} and budget["optimizer_steps"] == 16
    assert budget["prune_seconds"] == epochs["prune"]["seconds"]
    assert budget["peak_memory_mb"] == epochs["memory"]["peak_rss_mb"]
    shared = derived_budget(committed("4833c5fca00903b0"))
    assert set(shared["windows"]) == {"ids", "general", "domain", "reconstruct"}
    assert shared["tokens"] == {"general": 32 * 512 + 16 * 512, "domain": 32 * 256 + 16 * 512}


def test_a_config_that_no_longer_builds_its_method_has_no_budget() -> None:
    old = committed("70688a70243a872e")
    old["config"]["pruner"]["retired_option"] = 1
    assert derived_budget(old) is None
    stated = {**old, "budget": {"tokens": {"general": 1, "domain": 2}}}
    assert record_budget(stated) == stated["budget"]  # a stated budget is taken as it is


NLL = {  # (domain, general) mean NLL per token of each synthetic row: perplexity = exp(NLL)
    "dense": (2.0, 2.5), "wanda": (3.0, 3.0), "wandamix": (2.9, 3.1),
    "dp1000": (2.6, 3.4), "dp4000": (2.4, 3.5), "sgptmix": (2.8, 2.9),
    "dpobs": (2.5, 3.2), "sgptdom": (2.7, 3.3), "wanda4": (2.95, 3.0),
}


def synthetic(key: str, pruner: str, tokens: int, calib: str = "general", **options: object) -> dict:
    """A record with per-item evidence, a stated budget of `tokens` domain tokens, and the config
    values that set the budget (D-Pruner's windows)."""
    legal_nll, general_nll = NLL[key]
    found = record(key, pruner, {"legal/multilegalpile": perplexity(legal_nll, seed=len(key)),
                                 "general/wikitext2": perplexity(general_nll, seed=len(key) + 1)})
    found["cell"]["calib"] = None if pruner == "dense" else calib
    found["config"]["pruner"].update(options)
    found["budget"] = {"tokens": {"general": 2048, "domain": tokens},
                       "passes": {"general": 1, "domain": 1 if tokens else 0}, "optimizer_steps": None,
                       "prune_seconds": 1.0 + tokens / 1000, "peak_memory_mb": 100.0 + tokens / 100,
                       "derived": False}
    return found


@pytest.fixture
def budget_board(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    for found in (synthetic("dense", "dense", 0), synthetic("wanda", "wanda", 0),
                  synthetic("wandamix", "wanda", 1000, calib="mixed"),
                  synthetic("dp1000", "dpruner", 1000, domain_calib={"nsamples": 2}),
                  synthetic("dp4000", "dpruner", 4000, domain_calib={"nsamples": 8}),
                  synthetic("sgptmix", "sparsegpt", 4000, calib="mixed")):
        save_record(folder, found)
    return folder


def test_budget_views_place_rank_and_front_the_rows(budget_board: Path, tmp_path: Path) -> None:
    cells, _ = read_cells(budget_board)
    (panel,), missing = panels(cells)
    assert missing == 0 and panel.levels == [0, 1000, 4000]
    curve = [p.domain_tokens for p in panel.points if p.series == "dpruner"]
    assert curve == [1000, 4000]  # the two budgets are one line (domain_calib is a budget setting)
    scores = {p.label: retention(panel, p) for p in panel.points}
    gain, loss = scores["wanda"]
    assert gain == pytest.approx(1 - math.exp(3.0 - 2.0), rel=0.05)
    assert loss == pytest.approx(math.exp(3.0 - 2.5) - 1, rel=0.05)
    assert pareto(scores) == {"sparsegpt · calib=mixed", "dpruner (domain_calib.nsamples=2)",
                              "dpruner (domain_calib.nsamples=8)"}

    out = tmp_path / "board"
    cache = ["--cache", str(tmp_path / "differences.json")]
    assert main([str(budget_board), "--out", str(out), *cache]) == 0
    assert not list(out.glob("*budget*"))  # only on request
    assert main([str(budget_board), "--out", str(out), "--budget", *cache]) == 0
    page = (out / "legal-budget.md").read_text(encoding="utf-8")
    at_1000 = page.split("### Equal budget: 1,000 domain tokens")[1].split("###")[0]
    dpruner_row = next(line for line in at_1000.splitlines() if line.startswith("| dpruner"))
    wanda_row = next(line for line in at_1000.splitlines() if line.startswith("| wanda · calib=mixed"))
    assert "**" in dpruner_row.split("|")[8] and "**" not in wanda_row.split("|")[8]  # domain ppl: separated
    assert "**" in wanda_row.split("|")[10] and "**" not in dpruner_row.split("|")[10]  # general ppl
    rows = list(csv.DictReader(io.StringIO((out / "legal-budget.csv").read_text(encoding="utf-8"))))
    by_label = {r["label"]: r for r in rows}
    assert by_label["dpruner (domain_calib.nsamples=8)"]["domain_tokens_seen"] == "4000"
    at_4000 = by_label["sparsegpt · calib=mixed"]
    assert float(at_4000["legal/multilegalpile/ppl_vs_best"]) == pytest.approx(
        math.exp(2.8) - math.exp(2.4), rel=0.05)  # against the best at its level, D-Pruner
    assert float(at_4000["legal/multilegalpile/ppl_vs_best_low"]) > 0  # the paired interval clears zero
    assert [r["pareto"] for r in rows if r["label"] == "wanda"] == ["False"]
    for view in ("budget_curves", "cost_fronts", "retention"):
        assert (out / f"legal-tiny-quick-s0.5-unstructured-{view}.png").read_bytes()[:4] == b"\x89PNG"


def window_set(source: str, windows: int, domain_windows: int) -> dict:
    return {"source": source, "windows": windows, "seqlen": 250, "domain_windows": domain_windows}


def test_equal_windows_place_a_method_that_reads_two_sets_beside_one_that_reads_one(tmp_path: Path) -> None:
    folder, out = tmp_path / "runs", tmp_path / "board"
    dpobs = synthetic("dpobs", "dpruner", 1500, calib="mixed", reconstruct="mixed")
    dpobs["budget"]["windows"] = {"domain": window_set("domain", 4, 4),
                                  "reconstruct": window_set("mixed", 4, 2),
                                  "general": window_set("general", 4, 0)}
    sgptmix = synthetic("sgptmix", "sparsegpt", 500, calib="mixed")
    sgptmix["budget"]["windows"] = {"ids": window_set("mixed", 4, 2)}
    sgptdom = synthetic("sgptdom", "sparsegpt", 1000, calib="domain")
    sgptdom["budget"]["windows"] = {"ids": window_set("domain", 4, 4)}
    wanda = synthetic("wanda4", "wanda", 0)
    wanda["budget"]["windows"] = {"ids": window_set("general", 4, 0)}  # no domain text: no window level
    for found in (synthetic("dense", "dense", 0), dpobs, sgptmix, sgptdom, wanda):
        save_record(folder, found)
    cells, _ = read_cells(folder)
    (panel,), _ = panels(cells)
    assert panel.levels == [0, 500, 1000, 1500]  # every equal-token table holds one row
    assert panel.window_levels() == [(4, 250)]
    assert sorted(p.label for p in panel.at_windows((4, 250))) == [
        "dpruner + obs(mixed) · calib=mixed", "sparsegpt · calib=domain", "sparsegpt · calib=mixed"]
    assert main([str(folder), "--out", str(out), "--budget", "--no-cache"]) == 0
    page = (out / "legal-budget.md").read_text(encoding="utf-8")
    table = page.split("### Equal windows: 4 windows of 250 tokens")[1].split("###")[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "**" in rows["dpruner + obs(mixed) · calib=mixed"].split("|")[8]  # lowest domain NLL
    assert set(rows) >= {"sparsegpt · calib=domain", "sparsegpt · calib=mixed"}
    by_label = {r["label"]: r for r in csv.DictReader(io.StringIO(
        (out / "legal-budget.csv").read_text(encoding="utf-8")))}
    assert (by_label["sparsegpt · calib=mixed"]["windows"], by_label["wanda"]["windows"]) == ("4", "")


def test_no_budget_views_where_every_row_has_one_level(tmp_path: Path) -> None:
    folder, out = tmp_path / "runs", tmp_path / "board"
    for found in (synthetic("dense", "dense", 0), synthetic("wanda", "wanda", 0)):
        save_record(folder, found)
    assert main([str(folder), "--out", str(out), "--budget", "--no-cache"]) == 0
    assert not list(out.glob("*budget*"))
