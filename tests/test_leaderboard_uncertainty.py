"""Which differences are real, from hand-made version 3 records with per-item evidence: intervals
shown, bold only where a paired test separates the best, `≈chance` against the items' baselines,
seeds folded into one row, differences to dense, the detectable difference, error bars, and old
records without evidence still built (and said to be untested)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import leaderboard
from bench.leaderboard import compare
from bench.leaderboard.__main__ import entries, main
from bench.results.evidence import metric_intervals, point_value
from bench.results.records import save_record
from core.uncertainty import detectable_difference

ITEMS = 200
ACC = "legal/casehold/acc"
PPL = "legal/multilegalpile/ppl"


def choice(correct: np.ndarray, n_choices: int = 5, gold: np.ndarray | None = None) -> dict:
    """A choice task's evidence: item i answered right where `correct[i]`, else the next label."""
    gold = np.arange(len(correct)) % n_choices if gold is None else gold
    pred = np.where(correct, gold, (gold + 1) % n_choices)
    return {"kind": "choice", "ids": [f"q{i}" for i in range(len(correct))], "gold": gold.tolist(),
            "pred": pred.tolist(), "n_choices": n_choices}


def perplexity(mean_nll: float, seed: int = 0) -> dict:
    tokens = np.full(16, 512)
    nll = tokens * np.random.default_rng(seed).normal(mean_nll, 0.05, size=16)
    return {"kind": "perplexity", "nll": nll.tolist(), "tokens": tokens.tolist(),
            "bytes": (tokens * 4).tolist()}


def record(key: str, pruner: str, evidence: dict[str, dict] | None = None, *, metrics: dict | None = None,
           intervals: dict | None = None, seed: int = 0, sparsity: float = 0.5, version: int = 3) -> dict:
    """A finished record; metrics and intervals from the evidence unless given (as old records)."""
    evidence = evidence or {}
    if metrics is None:
        metrics = {f"{source}/{name}": point_value(arrays, name) for source, arrays in evidence.items()
                   for name in (("acc",) if arrays["kind"] == "choice" else ("ppl",))}
    if intervals is None:
        intervals = metric_intervals(metrics, evidence)
    sparsity = 0.0 if pruner == "dense" else sparsity
    cell = {"model": "tiny", "pruner": pruner, "domain": "legal", "sparsity": sparsity,
            "pattern": "unstructured", "calib": None if pruner in ("dense", "magnitude") else "general",
            "seed": seed, "eval": "quick"}
    found = {"key": key, "version": version, "status": "done", "cell": cell,
             "config": {"pruner": {"name": pruner}, "sparsity": sparsity, "seed": seed},
             "metrics": metrics, "prune": {"seconds": 2.0}, "eval": {"seconds": 1.0, "details": {}}}
    return found | ({"metrics_ci": intervals, "evidence": evidence} if version >= 3 else {})


def correct(share: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(ITEMS) < share


def board(tmp_path: Path, records: list[dict], *options: str) -> tuple[str, list[dict], str]:
    """Saved, built through the command line: (Markdown, CSV rows, HTML) of the legal domain."""
    folder, out = tmp_path / "runs", tmp_path / "board"
    for r in records:
        save_record(folder, r)
    cache = str(tmp_path / "differences.json")
    assert main([str(folder), "--out", str(out), "--cache", cache, *options]) == 0
    text = (out / "legal.csv").read_text(encoding="utf-8")
    return ((out / "legal.md").read_text(encoding="utf-8"), list(csv.DictReader(io.StringIO(text))),
            (out / "legal.html").read_text(encoding="utf-8"))


def only_block(records: list[dict], tmp_path: Path) -> leaderboard.Block:
    cells = [leaderboard.to_cell(tmp_path / f"{r['key']}.json", r) for r in records]
    ((suite,),) = leaderboard.build(cells).values()
    (block,) = suite.blocks
    return block


def test_a_planted_difference_gives_one_bold(tmp_path: Path) -> None:
    base = correct(0.5, 1)
    records = [record("dense", "dense", {"legal/casehold": choice(correct(0.9, 0))}),
               record("wanda", "wanda", {"legal/casehold": choice(base | correct(0.6, 2))}),  # ~0.8
               record("magnitude", "magnitude", {"legal/casehold": choice(base)}),
               record("sgpt", "sparsegpt", {"legal/casehold": choice(base & correct(0.9, 3))})]
    block = only_block(records, tmp_path)
    assert block.best[ACC] == {"wanda"} and not block.untested

    md, rows, page = board(tmp_path, records)
    wanda = next(r for r in rows if r["method"] == "wanda")
    low, high = float(wanda[f"{ACC}_low"]), float(wanda[f"{ACC}_high"])
    assert low < float(wanda[ACC]) < high
    assert f"| wanda | **{float(wanda[ACC]):.3f}** [{low:.3f}, {high:.3f}] |" in md
    assert f"<strong>{float(wanda[ACC]):.3f}</strong><span class='ci'> [{low:.3f}, {high:.3f}]</span>" in page
    assert "without a paired test" not in md and "no per-item evidence" not in md


def test_nearly_equal_methods_share_the_bold(tmp_path: Path) -> None:
    good = correct(0.8, 4)
    twin = good.copy()
    twin[:4] = ~twin[:4]  # two or so items apart
    records = [record("dense", "dense", {"legal/casehold": choice(correct(0.9, 0))}),
               record("wanda", "wanda", {"legal/casehold": choice(good)}),
               record("sgpt", "sparsegpt", {"legal/casehold": choice(twin)}),
               record("magnitude", "magnitude", {"legal/casehold": choice(correct(0.3, 5))})]
    block = only_block(records, tmp_path)
    assert block.best[ACC] == {"wanda", "sparsegpt"}


def test_near_chance_is_marked_against_the_better_baseline(tmp_path: Path) -> None:
    gold = np.array([0] * 120 + [1] * 40 + [2] * 40)  # majority 0.6 beats chance 1/3
    guessing = np.random.default_rng(6).random(ITEMS) < 0.6
    records = [record("dense", "dense", {"legal/casehold": choice(correct(0.95, 7), 3, gold)}),
               record("magnitude", "magnitude", {"legal/casehold": choice(guessing, 3, gold)})]
    block = only_block(records, tmp_path)
    dense, magnitude = block.rows
    assert ACC in magnitude.near_chance and ACC not in dense.near_chance

    md, rows, page = board(tmp_path, records)
    assert "Chance / majority over the items scored: casehold acc 0.333 / 0.600." in md
    mag = next(r for r in rows if r["method"] == "magnitude")
    assert mag[f"{ACC}_near_chance"] == "True" and rows[0][f"{ACC}_near_chance"] == "False"
    line = next(line for line in md.splitlines() if line.startswith("| magnitude |"))
    assert line.endswith("] ≈chance | 2.0 |")
    assert md.count("≈chance |") == 1 and "<span class='chance'>≈chance</span>" in page


def test_seeds_fold_into_one_row_with_item_and_seed_variation(tmp_path: Path) -> None:
    values = [30.0, 34.0, 38.0]
    records = [record("dense", "dense", metrics={PPL: 20.0}, intervals={PPL: [19.0, 21.0]})]
    records += [record(f"wanda{s}", "wanda", metrics={PPL: v}, intervals={PPL: [v - 1.0, v + 1.0]}, seed=s)
                for s, v in enumerate(values)]
    records.append(record("magnitude", "magnitude", metrics={PPL: 50.0}, intervals={PPL: [49.0, 51.0]}))
    block = only_block(records, tmp_path)
    row = next(r for r in block.rows if r.label == "wanda (3 seeds)")
    estimate = row.estimates[PPL]
    assert estimate.value == pytest.approx(34.0) and estimate.spread == (30.0, 38.0)
    z = 1.959964
    half = z * math.sqrt((1.0 / z) ** 2 + np.var(values, ddof=1) / 3)
    assert estimate.interval == pytest.approx((34.0 - half, 34.0 + half), rel=1e-5)
    assert half > 1.0  # wider than any one seed's

    md, rows, _ = board(tmp_path, records)
    assert f"| wanda (3 seeds) | **34.00** [{34 - half:.2f}, {34 + half:.2f}] (30.00–38.00) | 2.0 |" in md
    wanda = next(r for r in rows if r["method"] == "wanda")
    assert wanda["n_seeds"] == "3" and wanda["key"] == "wanda0 wanda1 wanda2"
    assert float(wanda[f"{PPL}_seed_min"]) == 30.0 and float(wanda[f"{PPL}_seed_max"]) == 38.0
    assert len(rows) == 3


def test_a_seeded_interval_stays_inside_the_values_a_metric_can_take(tmp_path: Path) -> None:
    """Seeds that disagree widen the normal interval past 0 for an accuracy near 0 (and past 1
    near 1): it is cut there, as no seed could score outside [0, 1]."""
    records = [record("dense", "dense", metrics={ACC: 0.5}, intervals={ACC: [0.3, 0.7]})]
    records += [record(f"low{s}", "wanda", metrics={ACC: v}, intervals={ACC: [0.0, v + 0.05]}, seed=s)
                for s, v in enumerate([0.0, 0.02, 0.10])]
    records += [record(f"high{s}", "sparsegpt", metrics={ACC: v}, intervals={ACC: [v - 0.05, 1.0]}, seed=s)
                for s, v in enumerate([1.0, 0.98, 0.90])]
    rows = {r.label: r for r in only_block(records, tmp_path).rows}
    low, high = rows["wanda (3 seeds)"].estimates[ACC], rows["sparsegpt (3 seeds)"].estimates[ACC]
    assert low.interval[0] == 0.0 < low.value < low.interval[1] < 0.2
    assert 0.8 < high.interval[0] < high.value < high.interval[1] == 1.0


def test_seeded_rows_are_compared_on_the_same_items(tmp_path: Path) -> None:
    base = correct(0.5, 8)
    records = [record("dense", "dense", {"legal/casehold": choice(correct(0.9, 0))})]
    records += [record(f"wanda{s}", "wanda", {"legal/casehold": choice(base | correct(0.5, 10 + s))}, seed=s)
                for s in range(3)]
    records.append(record("magnitude", "magnitude", {"legal/casehold": choice(base)}))
    block = only_block(records, tmp_path)
    assert block.best[ACC] == {"wanda (3 seeds)"} and not block.untested


def test_differences_to_dense_on_request(tmp_path: Path) -> None:
    records = [record("dense", "dense", {"legal/multilegalpile": perplexity(3.0)}),
               record("wanda", "wanda", {"legal/multilegalpile": perplexity(3.4, seed=1)}),
               record("magnitude", "magnitude", {"legal/multilegalpile": perplexity(4.0, seed=2)})]
    md, rows, page = board(tmp_path, records, "--vs-dense")
    wanda = next(r for r in rows if r["method"] == "wanda")
    gap = float(wanda[PPL]) - float(rows[0][PPL])
    assert float(wanda[f"{PPL}_vs_dense"]) == pytest.approx(gap)
    low, high = float(wanda[f"{PPL}_vs_dense_low"]), float(wanda[f"{PPL}_vs_dense_high"])
    assert 0 < low < gap < high
    assert "Difference to dense (pruned − dense" in md and "Difference to dense" in page
    assert f"| wanda | +{gap:.2f} [+{low:.2f}, +{high:.2f}] |" in md
    assert rows[0][f"{PPL}_vs_dense"] == ""  # dense itself


def test_the_header_states_the_detectable_difference(tmp_path: Path) -> None:
    dense = correct(0.7, 11)
    records = [record("dense", "dense", {"legal/casehold": choice(dense)}),
               record("wanda", "wanda", {"legal/casehold": choice(correct(0.6, 12))})]
    md, _, _ = board(tmp_path, records)
    p = dense.mean()
    smallest = detectable_difference(p * (1 - p) * ITEMS / (ITEMS - 1), ITEMS)
    assert f"casehold ({ITEMS} items) acc {smallest:.3f}" in md


def test_plots_get_the_intervals(tmp_path: Path) -> None:
    records = [record("dense", "dense", {"legal/multilegalpile": perplexity(3.0)}),
               record("wanda", "wanda", {"legal/multilegalpile": perplexity(3.4, seed=1)})]
    cells = leaderboard.label_cells(leaderboard.to_cell(tmp_path / f"{r['key']}.json", r) for r in records)
    wanda = next(e for e in entries(cells) if e.series == "wanda")
    assert wanda.intervals[PPL] == tuple(records[1]["metrics_ci"][PPL])
    board(tmp_path, records)
    assert (tmp_path / "board" / "legal-tiny-quick-ppl_vs_sparsity.png").stat().st_size > 1000


def test_old_records_without_evidence_still_build(tmp_path: Path) -> None:
    old = [record("dense", "dense", metrics={ACC: 0.6}, version=1),
           record("wanda", "wanda", metrics={ACC: 0.5}, version=2),
           record("magnitude", "magnitude", metrics={ACC: 0.4}, version=2)]
    block = only_block(old, tmp_path)
    assert block.best[ACC] == {"wanda"} and block.untested == {ACC}
    md, rows, _ = board(tmp_path, old)
    assert "| wanda | **0.500** | 2.0 |" in md
    assert "3 of 3 records carry no per-item evidence" in md
    assert "Bold here is the point-best, without a paired test" in md
    assert rows[1][f"{ACC}_low"] == "" and "] ≈chance" not in md and f"{ACC}_near_chance" not in rows[1]


def test_one_record_without_evidence_leaves_its_columns_untested(tmp_path: Path) -> None:
    records = [record("dense", "dense", {"legal/casehold": choice(correct(0.9, 0))}),
               record("wanda", "wanda", {"legal/casehold": choice(correct(0.8, 1))}),
               record("magnitude", "magnitude", metrics={ACC: 0.3}, version=2)]
    block = only_block(records, tmp_path)
    assert block.best[ACC] == {"wanda"} and block.untested == {ACC}


def test_a_rebuild_reuses_the_stored_differences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [record("dense", "dense", {"legal/casehold": choice(correct(0.9, 0))}),
               record("wanda", "wanda", {"legal/casehold": choice(correct(0.8, 1))}),
               record("magnitude", "magnitude", {"legal/casehold": choice(correct(0.3, 2))})]
    first, _, _ = board(tmp_path, records, "--vs-dense")
    assert (tmp_path / "differences.json").exists()

    def bootstrap(*_: object) -> None:
        raise AssertionError("bootstrapped again")

    monkeypatch.setattr(compare, "difference", bootstrap)
    again, _, _ = board(tmp_path, records, "--vs-dense")
    assert again.splitlines()[3:] == first.splitlines()[3:]  # all but the time it was generated


@pytest.mark.parametrize(("damage", "why"), [
    ('{"a": [0.1, 0.0', "unreadable: "), ("[1, 2]", "not a table of differences"),
    ('{"a": [0.1, 0.0], "b": null}', "1 of 2 entries are not [difference, low, high]")])
def test_a_damaged_cache_is_one_warning_and_recomputed(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       damage: str, why: str) -> None:
    records = [record("dense", "dense", {"legal/casehold": choice(correct(0.9, 0))}),
               record("wanda", "wanda", {"legal/casehold": choice(correct(0.8, 1))}),
               record("magnitude", "magnitude", {"legal/casehold": choice(correct(0.3, 2))})]
    first, _, _ = board(tmp_path, records, "--vs-dense")
    cache = tmp_path / "differences.json"
    stored = json.loads(cache.read_text(encoding="utf-8"))
    cache.write_text(damage, encoding="utf-8")
    capsys.readouterr()
    again, _, _ = board(tmp_path, records, "--vs-dense")
    shown = capsys.readouterr()
    warnings = [line for line in (shown.out + shown.err).splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: paired-difference cache {cache} is damaged ({why}")
    assert warnings[0].endswith("); discarded, recomputing")
    assert again.splitlines()[3:] == first.splitlines()[3:]
    assert json.loads(cache.read_text(encoding="utf-8")) == stored  # recomputed and stored again


def test_only_cells_that_differ_by_seed_alone_share_a_row(tmp_path: Path) -> None:
    """Another seed folds in; the same seed read from edited data (other fingerprints) does not."""
    records = [record(f"w{s}", "wanda", metrics={PPL: 30.0 + s}, intervals={}, seed=s) for s in (0, 1)]
    records.append(record("w0-edited", "wanda", metrics={PPL: 40.0}, intervals={}))
    records[2]["config"]["inputs"] = {"legal/texts.jsonl": "0123abcd"}
    block = only_block(records, tmp_path)
    labels = sorted(r.label for r in block.rows)
    assert labels == ["wanda (w0) (2 seeds)", "wanda (w0-edited)"]
