"""The mask x update view from hand-made records with per-item evidence (no model runs): rows are
masks and columns updates, SparseGPT in the column of its windows, the numbers and the paired
differences those of the evidence, bold only where the paired test separates the best, the gap to
dense split exactly, panels without a mask both with and without an update left out, and the
files written only on request."""

from __future__ import annotations

import csv
import io
import math
import zlib
from pathlib import Path

import pytest

from bench.leaderboard.__main__ import main
from bench.leaderboard.compare import excludes_zero
from bench.results.evidence import paired_difference
from bench.results.records import save_record
from tests.test_leaderboard_uncertainty import perplexity, record

DOMAIN, WIKI = "legal/multilegalpile", "general/wikitext2"
PPL, WIKI_PPL = f"{DOMAIN}/ppl", f"{WIKI}/ppl"
READS_WINDOWS = ("wanda", "sparsegpt")  # the masks here that read the calib group's windows

# key: (method, refine, update, calib, sparsity, pattern, mean NLL per token on (legal, wikitext2))
CELLS = {
    "dense": ("dense", "none", "none", None, 0.0, "unstructured", (2.0, 2.5)),
    "mag": ("magnitude", "none", "none", None, 0.5, "unstructured", (3.0, 3.4)),
    "mag-obs": ("magnitude", "none", "mixed", "mixed", 0.5, "unstructured", (2.6, 3.0)),
    "wanda": ("wanda", "none", "none", "general", 0.5, "unstructured", (2.5, 2.9)),
    "wanda-obs": ("wanda", "none", "mixed", "general", 0.5, "unstructured", (2.3, 2.75)),
    "dsnot": ("wanda", "dsnot", "none", "general", 0.5, "unstructured", (2.47, 2.905)),
    "dsnot-obs": ("wanda", "dsnot", "mixed", "general", 0.5, "unstructured", (2.31, 2.76)),
    "dp": ("dpruner", "none", "none", None, 0.5, "unstructured", (2.4, 3.1)),
    "dp-lambda0": ("dpruner", "none", "none", None, 0.5, "unstructured", (2.42, 3.0)),
    "sgpt-general": ("sparsegpt", "none", "none", "general", 0.5, "unstructured", (2.35, 2.7)),
    "sgpt-mixed": ("sparsegpt", "none", "none", "mixed", 0.5, "unstructured", (2.15, 2.85)),
    # 70 %: no update at all; 2:4: an update, but no mask also without one -- both not shown
    "wanda70": ("wanda", "none", "none", "general", 0.7, "unstructured", (3.5, 3.9)),
    "sgpt70": ("sparsegpt", "none", "none", "mixed", 0.7, "unstructured", (3.0, 3.5)),
    "wanda24-obs": ("wanda", "none", "mixed", "general", 0.5, "2:4", (2.9, 3.3)),
    "mag24": ("magnitude", "none", "none", None, 0.5, "2:4", (3.6, 3.9)),
}


def synthetic(key: str) -> dict:
    """A record as a run writes it: the cell block's mask, refine and update (but the general
    SparseGPT record, written before they existed), the config's refine/reconstruct where not
    none, the calib group where the mask reads its windows, per-item evidence of both texts."""
    method, refine, update, calib, sparsity, pattern, (legal_nll, wiki_nll) = CELLS[key]
    seed = zlib.crc32(key.encode())
    found = record(key, method, {DOMAIN: perplexity(legal_nll, seed), WIKI: perplexity(wiki_nll, seed + 1)},
                   sparsity=sparsity)
    cell, config = found["cell"], found["config"]
    cell.update(pattern=pattern, calib=calib)
    config["pattern"] = pattern
    if key != "sgpt-general" and method != "dense":
        joint = method == "sparsegpt"
        cell.update(mask=method, refine=refine,
                    update="joint" if joint else "none" if update == "none" else f"obs({update})")
    config["pruner"].update({"refine": refine} if refine != "none" else {})
    config["pruner"].update({"reconstruct": update} if update != "none" else {})
    config["pruner"].update({"lambda_": 0.0} if key == "dp-lambda0" else {})
    if method in READS_WINDOWS or refine != "none":
        config["calib"] = {"source": calib, "nsamples": 32, "seqlen": 512, "mix": 0.5}
    elif update != "none":  # magnitude: the update's windows are the only ones it reads
        config["calib"] = {"nsamples": 32, "seqlen": 512, "mix": 0.5}
    return found


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mask_update")
    records = {key: synthetic(key) for key in CELLS}
    for found in records.values():
        save_record(root / "runs", found)
    cache = ["--cache", str(root / "differences.json")]
    assert main([str(root / "runs"), "--out", str(root / "plain"), *cache]) == 0
    assert main([str(root / "runs"), "--out", str(root / "board"), "--mask-update", *cache]) == 0
    return root, records


def ppl(found: dict, source: str) -> float:
    """The perplexity straight from the evidence: exp(summed NLL / summed tokens)."""
    evidence = found["evidence"][source]
    return math.exp(sum(evidence["nll"]) / sum(evidence["tokens"]))


def paired(records: dict, a: str, b: str, source: str) -> tuple[float, float, float]:
    return paired_difference(records[a]["evidence"][source], records[b]["evidence"][source], "ppl")


def table(page: str, heading: str) -> dict[str, dict[str, str]]:
    """The Markdown table under `heading`: {mask: {column header (repeats numbered): cell}}."""
    lines = page.split(f"### {heading}\n")[1].split("\n###")[0].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    head, seen = [], {}
    for name in rows[0]:
        seen[name] = seen.get(name, 0) + 1
        head.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    return {row[0]: dict(zip(head, row, strict=True)) for row in rows[2:]}


def csv_rows(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    text = (root / "board" / "legal-mask-update.csv").read_text(encoding="utf-8")
    return {(r["mask"], r["update"]): r for r in csv.DictReader(io.StringIO(text))}


def test_only_panels_with_a_mask_with_and_without_an_update(board: tuple[Path, dict]) -> None:
    root, _ = board
    assert not list((root / "plain").glob("*mask-update*"))  # only on request
    assert sorted(p.name for p in (root / "board").glob("*mask-update*")) == [
        "legal-mask-update.csv", "legal-mask-update.md"]
    page = (root / "board" / "legal-mask-update.md").read_text(encoding="utf-8")
    assert "## tiny · eval=quick · sparsity 0.5 · unstructured" in page
    assert "sparsity 0.7" not in page and "· 2:4" not in page  # (a time of day may read 22:4x)
    assert "_1 row(s) with settings other than the defaults left out" in page  # dpruner (lambda_=0.0)
    rows = csv_rows(root)
    assert {r["sparsity"] for r in rows.values()} == {"0.5"} and {r["pattern"] for r in rows.values()} == {
        "unstructured"}
    assert sorted(rows) == sorted([("magnitude", "none"), ("magnitude", "obs(mixed)"), ("wanda", "none"),
                                   ("wanda", "obs(mixed)"), ("wanda + dsnot", "none"),
                                   ("wanda + dsnot", "obs(mixed)"), ("dpruner", "none"),
                                   ("sparsegpt (joint)", "obs(general)"),
                                   ("sparsegpt (joint)", "obs(mixed)")])


def test_values_and_sparsegpt_in_the_column_of_its_windows(board: tuple[Path, dict]) -> None:
    root, records = board
    page = (root / "board" / "legal-mask-update.md").read_text(encoding="utf-8")
    domain = table(page, "legal: multilegalpile ppl ↓")
    assert list(domain) == ["magnitude", "wanda", "wanda + dsnot", "dpruner", "sparsegpt (joint)"]
    assert list(domain["wanda"])[1:] == ["none", "Δ best", "obs(general)", "obs(general) − none", "Δ best 2",
                                         "obs(mixed)", "obs(mixed) − none", "Δ best 3"]
    low, high = records["wanda-obs"]["metrics_ci"][PPL]
    expected = ppl(records["wanda-obs"], DOMAIN)
    assert domain["wanda"]["obs(mixed)"] == f"{expected:.2f} [{low:.2f}, {high:.2f}]"
    joint = domain["sparsegpt (joint)"]
    assert joint["none"] == ""
    assert joint["obs(general)"].startswith(f"{ppl(records['sgpt-general'], DOMAIN):.2f} [")
    assert joint["obs(mixed)"].strip("*").startswith(f"{ppl(records['sgpt-mixed'], DOMAIN):.2f}")
    assert domain["dpruner"]["obs(mixed)"] == ""  # not run: an empty cell
    rows = csv_rows(root)
    assert rows[("sparsegpt (joint)", "obs(general)")]["joint"] == "True"
    assert rows[("magnitude", "obs(mixed)")]["joint"] == "False"  # the update's windows, not its mask's
    assert float(rows[("magnitude", "obs(mixed)")][WIKI_PPL]) == pytest.approx(ppl(records["mag-obs"], WIKI))
    assert page.count("Dense (reference): ") == 2


def test_paired_differences_are_those_of_the_evidence(board: tuple[Path, dict]) -> None:
    root, records = board
    rows = csv_rows(root)

    def check(row: dict[str, str], field: str, expected: tuple[float, float, float]) -> None:
        found = [float(row[f"{PPL}_{field}{end}"]) for end in ("", "_low", "_high")]
        assert found == pytest.approx(list(expected), abs=1e-9)

    for mask, update, key in (("wanda", "none", "wanda"), ("wanda", "obs(mixed)", "wanda-obs"),
                              ("sparsegpt (joint)", "obs(mixed)", "sgpt-mixed")):
        check(rows[(mask, update)], "vs_dense", paired(records, key, "dense", DOMAIN))
    effect = paired(records, "wanda-obs", "wanda", DOMAIN)  # within the row: update − none
    assert effect[0] == pytest.approx(ppl(records["wanda-obs"], DOMAIN) - ppl(records["wanda"], DOMAIN))
    check(rows[("wanda", "obs(mixed)")], "vs_none", effect)
    check(rows[("magnitude", "none")], "vs_best", paired(records, "mag", "dp", DOMAIN))  # dpruner: best
    check(rows[("wanda", "obs(mixed)")], "vs_best", paired(records, "wanda-obs", "sgpt-mixed", DOMAIN))
    assert rows[("dpruner", "none")][f"{PPL}_vs_best"] == ""  # the best itself
    assert rows[("sparsegpt (joint)", "obs(mixed)")][f"{PPL}_vs_none"] == ""  # joint: no mask alone
    page = (root / "board" / "legal-mask-update.md").read_text(encoding="utf-8")
    low, high = effect[1:]
    shown = table(page, "legal: multilegalpile ppl ↓")["wanda"]["obs(mixed) − none"]
    assert shown == f"−{abs(effect[0]):.2f} [−{abs(low):.2f}, −{abs(high):.2f}]"  # the update helps


def test_gap_to_dense_is_recovered_plus_remains(board: tuple[Path, dict]) -> None:
    root, records = board
    total, recovered, remains = (paired(records, "wanda", "dense", DOMAIN),
                                 paired(records, "wanda", "wanda-obs", DOMAIN),
                                 paired(records, "wanda-obs", "dense", DOMAIN))
    assert total[0] == pytest.approx(recovered[0] + remains[0])
    page = (root / "board" / "legal-mask-update.md").read_text(encoding="utf-8")
    domain_part = page.split("### legal: multilegalpile ppl ↓")[1].split("###")[0]
    line = next(x for x in domain_part.splitlines() if x.startswith("- wanda, obs(mixed):"))

    def text(found: tuple[float, float, float]) -> str:
        return f"+{found[0]:.2f} [+{found[1]:.2f}, +{found[2]:.2f}]"

    assert line == (f"- wanda, obs(mixed): total {text(total)} = recovered {text(recovered)} + remains "
                    f"{text(remains)} ({100 * recovered[0] / total[0]:.0f} % recovered)")
    joint = next(x for x in domain_part.splitlines() if x.startswith("- sparsegpt (joint), obs(mixed):"))
    gap = text(paired(records, "sgpt-mixed", "dense", DOMAIN))
    assert joint == f"- sparsegpt (joint), obs(mixed): remains {gap} (mask and update in one step)"


def test_bold_follows_the_paired_rule(board: tuple[Path, dict]) -> None:
    """Per column: the best alone where its paired difference to the runner-up excludes zero,
    else every row the test cannot tell from the best (decided here from the evidence)."""
    root, records = board
    page = (root / "board" / "legal-mask-update.md").read_text(encoding="utf-8")
    columns = {"none": {"magnitude": "mag", "wanda": "wanda", "wanda + dsnot": "dsnot", "dpruner": "dp"},
               "obs(mixed)": {"magnitude": "mag-obs", "wanda": "wanda-obs", "wanda + dsnot": "dsnot-obs",
                              "sparsegpt (joint)": "sgpt-mixed"}}
    found = {}
    for heading, source in (("legal: multilegalpile ppl ↓", DOMAIN), ("general: wikitext2 ppl ↓", WIKI)):
        shown = table(page, heading)
        for update, keys in columns.items():
            ranked = sorted(keys, key=lambda mask: ppl(records[keys[mask]], source))
            best = keys[ranked[0]]
            if excludes_zero(paired(records, best, keys[ranked[1]], source)):
                expected = {ranked[0]}
            else:
                expected = {ranked[0]} | {m for m in ranked[1:]
                                          if not excludes_zero(paired(records, keys[m], best, source))}
            bold = {mask for mask in keys if shown[mask][update].startswith("**")}
            assert bold == expected, (heading, update)
            found[source, update] = bold
        assert not shown["sparsegpt (joint)"]["obs(general)"].startswith("**")  # alone: no contest
    assert found[DOMAIN, "none"] == {"dpruner"}  # both branches of the rule are exercised
    assert found[DOMAIN, "obs(mixed)"] == {"sparsegpt (joint)"}
    assert found[WIKI, "obs(mixed)"] == {"wanda", "wanda + dsnot"}
    rows = csv_rows(root)
    assert rows[("wanda + dsnot", "obs(mixed)")][f"{WIKI_PPL}_best"] == "True"


def test_nothing_written_without_a_compared_panel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for key in ("dense", "wanda70", "sgpt70", "wanda24-obs", "mag24"):
        save_record(tmp_path / "runs", synthetic(key))
    out = tmp_path / "board"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--mask-update", "--no-cache"]) == 0
    assert not list(out.glob("*mask-update*"))
    assert "mask x update: no panel has a mask both with and without an update" in capsys.readouterr().out
