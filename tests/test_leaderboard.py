"""The leaderboard from constructed records (no model runs): the right cells, the best marked,
gaps empty, every kind of unusable record named with its reason and skipped, valid PNG plots
with the ablations in a figure of their own; masks round-trip and Jaccard; the W&B per-matrix
table of both record versions."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from bench import leaderboard
from bench.leaderboard import plots
from bench.leaderboard.__main__ import allocations, domain_plots, entries, main
from bench.results.mask_files import jaccard, load_masks, save_masks
from bench.results.records import save_record
from bench.results.tracking import PER_MATRIX, per_matrix_rows
from core.structure import model_linears

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_record(key: str, pruner: str, domain: str, sparsity: float, metrics: dict[str, float],
                pattern: str = "unstructured", calib: str | None = "general", masks: str | None = None,
                **pruner_options: object) -> dict:
    cell = {"model": "tiny", "pruner": pruner, "domain": domain, "sparsity": sparsity, "pattern": pattern,
            "calib": calib, "seed": 0, "eval": "smoke"}
    return {"key": key, "version": 1, "status": "done", "cell": cell,
            "config": {"pruner": {"name": pruner, **pruner_options}, "sparsity": sparsity,
                       "pattern": pattern},
            "metrics": metrics, "prune": {"seconds": 1.5}, "eval": {"seconds": 1.0, "details": {}},
            "masks": masks}


def write_raw(folder: Path, name: str, record: dict) -> None:
    """As a hand-edited or foreign file would be: no checks (save_record refuses bad metrics)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")  # NaN as JSON allows


def legal(ppl: float, f1: float | None, wiki: float) -> dict[str, float]:
    metrics = {"legal/multilegalpile/ppl": ppl, "general/wikitext2/ppl": wiki}
    if f1 is not None:
        metrics["legal/casehold/macro_f1"] = f1
    return metrics


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    records = [
        make_record("dense0000", "dense", "legal", 0.0, legal(10.0, 0.40, 20.0), calib=None),
        make_record("mag50", "magnitude", "legal", 0.5, legal(30.0, 0.30, 60.0), calib=None),
        make_record("wanda50", "wanda", "legal", 0.5, legal(15.0, 0.35, 25.0)),
        make_record("wanda60", "wanda", "legal", 0.6, legal(25.0, None, 40.0)),  # casehold not measured
        make_record("sgpt50", "sparsegpt", "legal", 0.5, legal(14.0, 0.31, 26.0)),
        make_record("sgpt24", "sparsegpt", "legal", 0.5, legal(18.0, 0.33, 30.0), pattern="2:4"),
        make_record("wandamix", "wanda", "legal", 0.5, legal(13.0, 0.36, 27.0), calib="mixed"),
        make_record("dprun50a", "dpruner", "legal", 0.5, legal(12.0, 0.37, 24.0), lambda_=0.1),
        make_record("dprun50b", "dpruner", "legal", 0.5, legal(12.5, 0.38, 23.0), lambda_=0.0),
        make_record("hc-wanda", "wanda", "healthcare", 0.5,
                    {"healthcare/medquad/ppl": 9.0, "healthcare/pubmedqa/acc": 0.5, "general/c4/ppl": 30.0}),
    ]
    for record in records:
        save_record(folder, record)
    (folder / "corrupt.json").write_text('{"key": "corrupt", "status": "do', encoding="utf-8")
    return folder


def block(suite: leaderboard.Suite, title: str) -> leaderboard.Block:
    return next(b for b in suite.blocks if b.title == title)


def values(block: leaderboard.Block, label: str) -> dict:
    return next(r.values for r in block.rows if r.label == label)


def test_tables_cells_best_and_gaps(results: Path) -> None:
    cells, skipped = leaderboard.read_cells(results)
    assert len(skipped) == 1
    assert skipped[0].startswith(f"skipped {results / 'corrupt.json'}: unreadable record (")
    suites = leaderboard.build(cells)
    assert set(suites) == {"legal", "healthcare"}
    (suite,) = suites["legal"]
    assert [b.title for b in suite.blocks] == [
        "sparsity 0.5 · unstructured", "sparsity 0.6 · unstructured", "sparsity 0.5 · 2:4",
        "sparsity 0.5 · unstructured · calib=mixed"]
    ppl, f1, wiki = "legal/multilegalpile/ppl", "legal/casehold/macro_f1", "general/wikitext2/ppl"
    assert suite.blocks[0].columns == [ppl, f1, wiki, leaderboard.COST]

    half = block(suite, "sparsity 0.5 · unstructured")
    labels = [r.label for r in half.rows]
    assert labels == ["dense (reference)", "magnitude", "wanda", "sparsegpt",
                      "dpruner", "dpruner (lambda_=0.0)"]  # λ = 0.1 is conf/'s default: bare
    assert values(half, "wanda")[ppl] == 15.0
    # best among pruned methods, never the dense reference; lower ppl, higher F1
    assert half.best[ppl] == {"dpruner"}
    assert half.best[f1] == {"dpruner (lambda_=0.0)"}
    assert half.best[wiki] == {"dpruner (lambda_=0.0)"}
    assert leaderboard.COST not in half.best

    # the dense reference is in every block; methods without a cell at 0.6 are empty rows
    sixty = block(suite, "sparsity 0.6 · unstructured")
    assert [r.label for r in sixty.rows] == ["dense (reference)", "magnitude", "wanda", "sparsegpt",
                                             "dpruner"]
    assert values(sixty, "magnitude") == {}
    assert values(sixty, "wanda").get(f1) is None
    assert [r.label for r in block(suite, "sparsity 0.5 · unstructured · calib=mixed").rows] == [
        "dense (reference)", "wanda · calib=mixed"]

    out = results.parent / "board"
    assert main([str(results), "--out", str(out)]) == 0
    md = (out / "legal.md").read_text(encoding="utf-8")
    assert md.splitlines()[2].startswith("Generated by `python -m bench.leaderboard ")
    assert "| wanda | 15.00 | 0.350 | 25.00 | 1.5 |" in md
    assert "| dpruner | **12.00** | 0.370 | 24.00 | 1.5 |" in md
    assert "| magnitude |  |  |  |  |" in md  # not run at 0.6: empty, not zero
    assert "| wanda | 25.00 |  | 40.00 | 1.5 |" in md  # casehold not measured; alone: nothing to mark
    assert "| dense (reference) | 10.00 | 0.400 | 20.00 | 1.5 |" in md

    rows = list(csv.DictReader(io.StringIO((out / "legal.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 9 and rows[0]["method"] == "dense"
    wanda60 = next(r for r in rows if r["key"] == "wanda60")
    assert wanda60[f1] == "" and float(wanda60[ppl]) == 25.0

    page = (out / "legal.html").read_text(encoding="utf-8")
    assert "<strong>12.00</strong>" in page and "data:image/png;base64," in page and "<link" not in page
    assert (out / "healthcare.md").exists() and (out / "healthcare.csv").exists()


def test_plots_are_valid_pngs(results: Path) -> None:
    out = results.parent / "board"
    assert main([str(results), "--out", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"legal-tiny-smoke-ppl_vs_sparsity.png", "legal-tiny-smoke-general_vs_domain.png",
            "healthcare-tiny-smoke-ppl_vs_sparsity.png"} <= names
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_corrupt_record_is_reported_and_skipped(results: Path, capsys: pytest.CaptureFixture) -> None:
    out = results.parent / "board"
    assert main([str(results), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert str(results / "corrupt.json") in err
    assert (results / "corrupt.json").exists()  # reported, never removed or overwritten
    assert "corrupt" not in (out / "legal.csv").read_text(encoding="utf-8")
    assert len((out / "legal.csv").read_text(encoding="utf-8").splitlines()) == 10


def test_wandb_table_and_images_offline(results: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_dir = tmp_path / "wandb"
    assert main([str(results), "--out", str(tmp_path / "board"), "--wandb",
                             "--wandb-dir", str(wandb_dir)]) == 0
    (run,) = (wandb_dir / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    tables = {p.name.split("_")[0]: p for p in (media / "table" / "leaderboard").glob("*.table.json")}
    assert set(tables) == {"legal", "healthcare"}
    table = json.loads(tables["legal"].read_text(encoding="utf-8"))
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    row = next(r for r in rows if r["key"] == "wanda60")
    assert row["legal/multilegalpile/ppl"] == 25.0 and row["legal/casehold/macro_f1"] is None
    plotted = {p.name.rsplit("_", 2)[0] for p in (media / "images" / "plots").glob("*.png")}
    assert plotted == {p.stem for p in (tmp_path / "board").glob("*.png")}


def break_metric(value: object) -> Callable[[dict], None]:
    return lambda record: record["metrics"].update({"legal/multilegalpile/ppl": value})


# Each kind of record the leaderboard cannot use, and the reason it gives.
UNUSABLE = {
    "text-metric": (break_metric("n/a"), "metric legal/multilegalpile/ppl is 'n/a', not a finite number"),
    "null-metric": (break_metric(None), "metric legal/multilegalpile/ppl is None, not a finite number"),
    "nan-metric": (break_metric(float("nan")), "metric legal/multilegalpile/ppl is nan, not a finite number"),
    "inf-metric": (break_metric(float("inf")), "metric legal/multilegalpile/ppl is inf, not a finite number"),
    "bool-metric": (break_metric(True), "metric legal/multilegalpile/ppl is True, not a finite number"),
    "no-metrics": (lambda r: r.update(metrics={}), "no metrics"),
    "metric-name": (lambda r: r["metrics"].update(ppl=1.0),
                    "metric name 'ppl' is not <scope>/<task>/<metric>"),
    "metrics-list": (lambda r: r.update(metrics=[1.0]), "'metrics' is a list, not a block of named values"),
    "cell-list": (lambda r: r.update(cell=["tiny"]), "'cell' is a list, not a block of named values"),
    "no-cell": (lambda r: r.pop("cell"), "no 'cell' block"),
    "cell-lacks": (lambda r: [r["cell"].pop(k) for k in ("model", "sparsity")],
                   "the cell block lacks model, sparsity"),
    "cell-domain": (lambda r: r["cell"].update(domain=3), "cell.domain is 3, not a name"),
    "cell-sparsity": (lambda r: r["cell"].update(sparsity="half"),
                      "cell.sparsity is 'half', not a fraction in [0, 1)"),
    "cell-full": (lambda r: r["cell"].update(sparsity=1.0), "cell.sparsity is 1.0, not a fraction in [0, 1)"),
    "cell-calib": (lambda r: r["cell"].update(calib=["c4"]), "cell.calib is ['c4'], not a name"),
    "version-4": (lambda r: r.update(version=4), "record version 4; this leaderboard reads versions 1 to 3"),
    "no-version": (lambda r: r.pop("version"), "record version None; this leaderboard reads versions 1 to 3"),
    "cell-seed": (lambda r: r["cell"].update(seed="0"), "cell.seed is '0', not a whole number"),
    "ci-ends": (lambda r: r.update(metrics_ci={"legal/multilegalpile/ppl": [31.0, 29.0]}),
                "metrics_ci legal/multilegalpile/ppl is [31.0, 29.0], not [low, high]"),
    "ci-text": (lambda r: r.update(metrics_ci={"legal/multilegalpile/ppl": "29-31"}),
                "metrics_ci legal/multilegalpile/ppl is '29-31', not [low, high]"),
    "allocation-kind": (lambda r: r.update(allocation={"kind": "owl"}),
                        "allocation 'owl' is not uniform or owl, or not the cell's"),
    "allocation-lists": (lambda r: (r["cell"].update(allocation="owl"),
                                    r.update(allocation={"kind": "owl", "outlier_ratios": [0.1, 0.2],
                                                         "sparsities": [0.5]})),
                         "allocation owl lacks outlier_ratios / sparsities: numbers, one per layer"),
    "evidence-kind": (lambda r: r.update(evidence={"legal/casehold": {"kind": "vote"}}),
                      "evidence legal/casehold is not per-item arrays of a known kind"),
    "evidence-lengths": (lambda r: r.update(evidence={"legal/casehold": {
        "kind": "choice", "ids": ["a", "b"], "gold": [0, 1], "pred": [0], "n_choices": 2}}),
                         "evidence legal/casehold (choice) lacks ids/gold/pred arrays of one length"),
    "evidence-choices": (lambda r: r.update(evidence={"legal/casehold": {
        "kind": "choice", "ids": ["a"], "gold": [0], "pred": [0], "n_choices": 0}}),
                         "evidence legal/casehold n_choices is 0, not a count"),
    "no-key": (lambda r: r.update(key=""), "key is '', not a name"),
    "prune-text": (lambda r: r.update(prune="fast"), "'prune' is a str, not a block of named values"),
    "prune-seconds": (lambda r: r["prune"].update(seconds="1s"),
                      "prune.seconds is '1s', not a finite number"),
    "config-list": (lambda r: r.update(config=[]), "'config' is a list, not a block of named values"),
    "masks-number": (lambda r: r.update(masks=3), "masks is 3, not a file name"),
}
UNREADABLE = {  # file text -> reason (from the record store)
    "truncated": ('{"key": "x", "status": "do', "unreadable record (Unterminated string"),
    "unfinished": ('{"key": "x", "status": "running", "metrics": {}}',
                   "not a finished record (no status 'done' / metrics)"),
    "a-list": ("[1, 2]", "not a finished record (no status 'done' / metrics)"),
}


def test_unusable_records_are_named_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Beside good records, every kind of bad one is named with its reason on stderr, one line
    each, and the leaderboard is built from the good ones (exit 0)."""
    folder = tmp_path / "runs"
    save_record(folder, make_record("good-dense", "dense", "legal", 0.0, legal(10.0, 0.4, 20.0), calib=None))
    save_record(folder, make_record("good-wanda", "wanda", "legal", 0.5, legal(15.0, 0.35, 25.0)))
    for name, (spoil, _) in UNUSABLE.items():
        record = make_record(name, "magnitude", "legal", 0.5, legal(30.0, 0.3, 60.0))
        spoil(record)
        write_raw(folder, name, record)
    for name, (text, _) in UNREADABLE.items():
        (folder / f"{name}.json").write_text(text, encoding="utf-8")

    out = tmp_path / "board"
    assert main([str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert len(lines) == len(captured.err.splitlines()) == len(UNUSABLE) + len(UNREADABLE)
    for name, (_, why) in UNUSABLE.items():
        assert f"skipped {folder / name}.json: {why}" in lines
    for name, (_, why) in UNREADABLE.items():
        assert any(line.startswith(f"skipped {folder / name}.json: {why}") for line in lines), name
    assert f"leaderboard: 2 cells ({len(lines)} record(s) skipped)" in captured.out
    rows = list(csv.DictReader(io.StringIO((out / "legal.csv").read_text(encoding="utf-8"))))
    assert [r["key"] for r in rows] == ["good-dense", "good-wanda"]


def test_nothing_usable_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path), "--out", str(tmp_path / "board")]) == 1
    assert capsys.readouterr().err == f"error: no usable records in {tmp_path}\n"

    record = make_record("text", "wanda", "legal", 0.5, legal(15.0, None, 25.0))
    break_metric("n/a")(record)
    write_raw(tmp_path, "text", record)
    assert main([str(tmp_path), "--out", str(tmp_path / "board")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"skipped {tmp_path / 'text.json'}: metric legal/multilegalpile/ppl is 'n/a', not a finite number",
        f"error: no usable records in {tmp_path} (1 skipped, named above)"]
    assert not (tmp_path / "board").exists()

    assert main([str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no results folder {tmp_path / 'absent'}")


def test_out_naming_a_file_is_one_error_line(results: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    taken = tmp_path / "board.md"
    taken.write_text("mine", encoding="utf-8")
    for out, why in ((taken, "it is a file"), (taken / "board", "Not a directory")):
        assert main([str(results), "--out", str(out)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("skipped ")]
        assert err == [f"error: --out {out} cannot hold the tables and plots ({why}); give a folder"]
    assert taken.read_text(encoding="utf-8") == "mine"


def test_direction() -> None:
    assert leaderboard.direction("legal/multilegalpile/ppl") == -1
    assert leaderboard.direction("general/c4/bpb") == -1
    assert leaderboard.direction("healthcare/pubmedqa/acc") == 1
    assert leaderboard.direction("legal/casehold/macro_f1") == 1
    assert leaderboard.direction("legal/billsum/rougeL") == 1
    assert leaderboard.direction("legal/billsum/gen_len") == 0


def test_masks_round_trip_and_jaccard(make_tiny, tmp_path: Path) -> None:
    model = make_tiny("llama")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for linear in model_linears(model).values():
            linear.weight.mul_(torch.rand(linear.weight.shape, generator=generator) > 0.5)
    path = save_masks(model, tmp_path / "masks" / "cell.npz")
    masks = load_masks(path)
    linears = model_linears(model)
    assert list(masks) == list(linears)
    for name, linear in linears.items():
        assert masks[name].dtype == bool and masks[name].shape == tuple(linear.weight.shape)
        assert np.array_equal(masks[name], (linear.weight != 0).numpy())
    assert not list(path.parent.glob("*.tmp"))
    bits = sum(w.weight.numel() for w in linears.values())
    assert path.stat().st_size < bits / 8 + 512 * (len(linears) + 2)  # one bit per weight + headers
    assert jaccard(masks, masks) == 1.0

    a = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)
    b = np.array([[1, 0, 0, 1], [1, 0, 1, 1]], dtype=bool)
    assert jaccard(a, b) == pytest.approx(3 / 6)  # kept in both: 3; in either: 6
    assert jaccard({"x": a, "y": a}, {"x": b, "y": a}) == pytest.approx((3 + 4) / (6 + 4))  # a keeps 4
    assert jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    with pytest.raises(ValueError):
        jaccard(a, b[:, :2])


def test_mask_similarity_plot(make_tiny, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "runs"
    cells = [("wanda", "legal"), ("wanda", "healthcare"), ("magnitude", "legal")]
    for i, (pruner, domain) in enumerate(cells):
        model = make_tiny("llama", seed=i)
        with torch.no_grad():
            for linear in model_linears(model).values():
                linear.weight.mul_(linear.weight.abs() > linear.weight.abs().median())
        save_masks(model, folder / "masks" / f"c{i}.npz")
        metric = f"{domain}/x/ppl"
        save_record(folder, make_record(f"c{i}", pruner, domain, 0.5, {metric: 10.0 + i},
                                        masks=f"masks/c{i}.npz"))
    save_record(folder, make_record("gone", "sparsegpt", "legal", 0.5, {"legal/x/ppl": 9.0},
                                    masks="masks/gone.npz"))  # e.g. records copied without masks
    out = tmp_path / "board"
    assert main([str(folder), "--out", str(out)]) == 0
    assert "1 record(s) name a mask file that is not there" in capsys.readouterr().err
    (heatmap,) = out.glob("masks-*.png")
    assert heatmap.name == "masks-tiny-smoke-s0.5-unstructured.png"
    assert heatmap.read_bytes()[:8] == PNG_SIGNATURE
    assert heatmap.name in (out / "legal.md").read_text(encoding="utf-8")
    assert heatmap.name in (out / "healthcare.md").read_text(encoding="utf-8")


def test_ablation_rows_name_only_their_change(tmp_path: Path) -> None:
    """Beside the configured default (conf/pruner/dpruner.yaml: λ 0.1, one epoch, no blocking),
    each row names only its own change; the default row stays bare."""
    base = {"lambda_": 0.1, "epochs": 1, "blocking": False}
    changes = [{}, {"lambda_": 1e10}, {"epochs": 2}, {"blocking": True, "lambda_": 0.0}]
    cells = [leaderboard.to_cell(tmp_path / f"d{i}.json",
                                 make_record(f"d{i}", "dpruner", "legal", 0.5, legal(12.0, None, 20.0),
                                             **{**base, **change}))
             for i, change in enumerate(changes)]
    labels = sorted(c.label for c in leaderboard.label_cells(cells))
    assert labels == ["dpruner", "dpruner (blocking=True, lambda_=0.0)", "dpruner (epochs=2)",
                      "dpruner (lambda_=10000000000.0)"]


def test_labels_follow_the_configured_default_not_the_majority(tmp_path: Path) -> None:
    """Three cells of another preset at λ = 0 outnumber the one default cell: the default row
    still stays bare and the others name λ; a record that leaves a setting out ran it at its
    default (records.cell_config), so it reads as the cell that states the default."""
    changes = [{"lambda_": 0.1}, *({"lambda_": 0.0, "epochs": e} for e in (1, 2, 3))]

    def cells(options: list[dict]) -> list:
        metrics = legal(12.0, None, 20.0)
        records = [make_record(f"d{i}", "dpruner", "legal", 0.5, metrics, **o) for i, o in enumerate(options)]
        return [leaderboard.to_cell(tmp_path / f"{r['key']}.json", r) for r in records]

    labels = sorted(c.label for c in leaderboard.label_cells(cells(changes)))
    assert labels == ["dpruner", "dpruner (epochs=2, lambda_=0.0)", "dpruner (epochs=3, lambda_=0.0)",
                      "dpruner (lambda_=0.0)"]
    pair = cells([{}, {"blocking": True}])
    assert sorted(c.label for c in leaderboard.label_cells(pair)) == ["dpruner", "dpruner (blocking=True)"]
    # alone, or shared by every row, a departure is still named: a bare label is the default
    alone = cells([{"blocking": True}])
    assert [c.label for c in leaderboard.label_cells(alone)] == ["dpruner (blocking=True)"]
    both = cells([{"blocking": True}, {"blocking": True, "epochs": 2}])
    assert sorted(c.label for c in leaderboard.label_cells(both)) == [
        "dpruner (blocking=True)", "dpruner (blocking=True, epochs=2)"]


def test_a_setting_an_ablation_does_not_read_is_left_out_of_its_label(tmp_path: Path) -> None:
    """domain_only reads no general calibration, so its record has no `calib` block: the row is
    named by its change alone, not also by `calib.nsamples=None`."""
    records = [make_record(f"d{i}", "dpruner", "legal", 0.5, legal(12.0, None, 20.0), **change)
               for i, change in enumerate([{}, {"epochs": 2}, {"importance": "domain_only"}])]
    for record in records[:2]:
        record["config"]["calib"] = {"nsamples": 32, "seqlen": 512}
    cells = [leaderboard.to_cell(tmp_path / f"{r['key']}.json", r) for r in records]
    labels = sorted(c.label for c in leaderboard.label_cells(cells))
    assert labels == ["dpruner", "dpruner (epochs=2)", "dpruner (importance=domain_only)"]


def test_ablations_are_plotted_apart_from_the_methods(tmp_path: Path) -> None:
    """The trade-off figure shows one series per method (its default row) and dense; the
    variants get a figure of their own beside their method's default at the same setting."""
    base = {"lambda_": 0.1, "epochs": 1}
    records = [make_record("dense", "dense", "legal", 0.0, legal(10.0, None, 20.0), calib=None),
               make_record("wanda", "wanda", "legal", 0.5, legal(15.0, None, 25.0)),
               make_record("wanda24", "wanda", "legal", 0.5, legal(19.0, None, 31.0), pattern="2:4"),
               make_record("dp24", "dpruner", "legal", 0.5, legal(17.0, None, 29.0), pattern="2:4", **base)]
    records += [make_record(f"dp{i}", "dpruner", "legal", 0.5, legal(12.0 + i, None, 22.0),
                            **{**base, **change})
                for i, change in enumerate([{}, {"lambda_": 0.0}, {"epochs": 2}])]
    cells = leaderboard.label_cells(leaderboard.to_cell(tmp_path / f"{r['key']}.json", r) for r in records)
    methods, ablations = plots.split_series(entries(cells))
    assert sorted({e.series for e in methods}) == ["dense", "dpruner", "wanda"]
    assert sorted((e.series, e.pattern) for e in ablations) == [
        ("dpruner", "unstructured"), ("dpruner (epochs=2)", "unstructured"),
        ("dpruner (lambda_=0.0)", "unstructured")]  # the default at the variants' setting, not at 2:4

    (suite,) = leaderboard.build(cells)["legal"]
    made = domain_plots(suite, tmp_path / "board")
    assert [p.name for p in made] == ["legal-tiny-smoke-ppl_vs_sparsity.png",
                                      "legal-tiny-smoke-general_vs_domain.png",
                                      "legal-tiny-smoke-ablations_general_vs_domain.png"]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in made)

    without = [c for c in cells if not c.variant]
    assert plots.split_series(entries(without))[1] == []
    (plain,) = leaderboard.build(without)["legal"]
    assert not any("ablations" in p.name for p in domain_plots(plain, tmp_path / "plain"))


def test_wandb_per_matrix_sparsity_from_the_summary() -> None:
    """Version 2 records keep per-matrix sparsity in the summary; version 1 in the reports."""
    report = {"name": "layers.0.q", "shape": [4, 4], "error": 0.1, "seconds": 0.5, "peak_mem_mb": 9.0}
    v2 = {"prune": {"matrices": [report]}, "sparsity": {"per_matrix": {"layers.0.q": 0.5}}}
    v1 = {"prune": {"matrices": [{**report, "sparsity": 0.25}]}, "sparsity": {"achieved": 0.25}}
    assert PER_MATRIX[:2] == ("name", "sparsity")
    assert per_matrix_rows(v2) == [["layers.0.q", 0.5, 0.1, 0.5, 9.0]]
    assert per_matrix_rows(v1) == [["layers.0.q", 0.25, 0.1, 0.5, 9.0]]


def test_owl_and_reconstruction_rows_and_the_layer_plot(tmp_path: Path) -> None:
    """OWL cells get a row of their own beside the uniform one (`· owl`), reconstruction is named
    in D-Pruner's row (`+ obs(mixed)`), and the OWL allocation is drawn per layer, once per target."""
    SHARES = [0.78, 0.7, 0.62]  # noqa: N806

    def owl(record: dict, sparsities: list[float]) -> dict:
        record["cell"]["allocation"] = record["config"]["allocation"] = "owl"
        record["allocation"] = {"kind": "owl", "threshold": 5.0, "lambda_": 0.08,
                                "outlier_ratios": [0.01, 0.02, 0.03], "sparsities": sparsities}
        return record

    records = [make_record("dense", "dense", "legal", 0.0, legal(10.0, None, 20.0), calib=None),
               make_record("wanda", "wanda", "legal", 0.7, legal(90.0, None, 95.0)),
               owl(make_record("wanda-owl", "wanda", "legal", 0.7, legal(70.0, None, 80.0)), SHARES),
               owl(make_record("sgpt-owl", "sparsegpt", "legal", 0.7, legal(50.0, None, 60.0)), SHARES),
               make_record("dp", "dpruner", "legal", 0.7, legal(60.0, None, 70.0)),
               make_record("dp-rec", "dpruner", "legal", 0.7, legal(40.0, None, 50.0), reconstruct="mixed")]
    cells = leaderboard.label_cells(leaderboard.to_cell(tmp_path / f"{r['key']}.json", r) for r in records)
    assert sorted(c.label for c in cells) == ["dense", "dpruner", "dpruner + obs(mixed)",
                                              "sparsegpt · owl", "wanda", "wanda · owl"]
    (suite,) = leaderboard.build(cells)["legal"]
    (block,) = [b for b in suite.blocks if "0.7" in b.title]
    assert values(block, "wanda · owl")["legal/multilegalpile/ppl"] == 70.0
    made = domain_plots(suite, tmp_path / "board")
    assert "legal-tiny-smoke-owl_layer_sparsity.png" in [p.name for p in made]
    (allocation,) = allocations(cells)  # the two OWL cells share their allocation: one line
    assert allocation.sparsities == (0.78, 0.7, 0.62)
