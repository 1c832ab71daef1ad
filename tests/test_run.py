"""run.py from the command line: clear one-line errors before any model loads, and an end-to-end
cell on the real embedded model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import probe_reports, probed_run

ROOT = Path(__file__).resolve().parent.parent


def run(*overrides: str, results: Path | None = None, timeout: int = 600,
        probe: Path | None = None) -> subprocess.CompletedProcess:
    """run.py with these overrides; with `probe`, watched (tests/conftest.py: PROBED_RUN)."""
    script, watched = probed_run(probe) if probe else ("run.py", {})
    args = [sys.executable, str(script), *overrides, "logger=none"]
    if results is not None:
        args.append(f"results.dir={results}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **watched}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize(("override", "expected"), [
    (["pruner=foo"], "unknown pruner 'foo'"),
    (["sparsity=1.5"], "sparsity=1.5 is outside [0, 1)"),
    (["sparsity=-0.1"], "sparsity=-0.1 is outside [0, 1)"),
    (["pattern=3:2"], "pattern='3:2' is not valid"),
    (["pattern=2:x"], "pattern='2:x' is not valid"),
    (["data.root=/nonexistent/data"], "data root '/nonexistent/data' does not exist"),
    (["data.general.calib.path=general/missing.jsonl"], "missing.jsonl' not found"),
    (["domain=legal", "domain.perplexity.multilegalpile.path=nope.jsonl"], "nope.jsonl' not found"),
    (["model=nonexistent"], "unknown model 'nonexistent'"),
    (["model=hub", "model.name_or_path=/no/such/model"], "'/no/such/model' cannot be loaded"),
    (["calib.source=elsewhere"], "calib.source='elsewhere'"),
    (["driver.propagate=sideways"], "driver.propagate='sideways'"),
    (["sparsity=abc"], "sparsity='abc' must be a number"),
    (["seed=abc"], "seed='abc' must be a whole number"),
    (["driver.batch_size=0"], "driver.batch_size=0 must be >= 1"),
    (["pruner.lambda_=-1"], "pruner.lambda_=-1"),
    (["+dpruner_variant=nope"], "unknown dpruner_variant 'nope'"),
])
def test_bad_input_is_one_clear_line(override: list[str], expected: str, tmp_path: Path) -> None:
    result = run(*override, results=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "load: model" not in result.stdout  # failed before the model loaded (marker checked below)
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_end_to_end_on_embedded_model(tmp_path: Path) -> None:
    """dense, wanda, magnitude at 50% on the real model: exact sparsity, finite metrics, the
    expected perplexity order, and a rerun that skips finished cells."""
    overrides = ["-m", "pruner=dense,wanda,magnitude", "domain=legal", "eval=smoke",
                 "calib.nsamples=4", "calib.seqlen=128"]
    first = run(*overrides, results=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    records = {r["cell"]["pruner"]: r for r in (json.loads(p.read_text()) for p in tmp_path.glob("*.json"))}
    assert set(records) == {"dense", "wanda", "magnitude"}
    for name, record in records.items():
        assert all(math.isfinite(v) for v in record["metrics"].values())
        assert {"legal/multilegalpile/ppl", "general/wikitext2/ppl", "general/c4/ppl",
                "general/c4/bpb"} <= set(record["metrics"])
        target = 0.0 if name == "dense" else 0.5
        per_matrix = record["sparsity"]["per_matrix"].values()
        assert all(abs(s - target) < (1e-2 if name == "dense" else 1e-3) for s in per_matrix)
        assert record["cell"]["sparsity"] == target
    assert records["wanda"]["sparsity"]["achieved"] == 0.5
    assert 0.35 < records["wanda"]["sparsity"]["model"] < 0.5  # embeddings and norms are not pruned
    for key in ("general/wikitext2/ppl", "legal/multilegalpile/ppl"):
        ppl = {name: records[name]["metrics"][key] for name in records}
        assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"], (key, ppl)
    again = run(*overrides, results=tmp_path)
    assert again.returncode == 0 and again.stdout.count("skip: cell") == 3
    assert len(list(tmp_path.glob("*.json"))) == 3


@pytest.mark.slow
def test_saved_pruned_model_reloads_with_identical_perplexity(tmp_path: Path) -> None:
    tiny = ["model=tiny-llama", "eval=smoke", "calib.nsamples=2", "calib.seqlen=64", "driver.progress=false"]
    pruned = run(*tiny, "pruner=wanda", "save_model=true", results=tmp_path / "runs")
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert "load: model tiny-llama on cpu" in pruned.stdout  # the marker the bad-input test relies on
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    folder = Path(record["saved_model"])
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    reloaded = run("model=hub", f"model.name_or_path={folder}", "model.dtype=float32", "model.device=cpu",
                   "pruner=dense", "eval=smoke", results=tmp_path / "again")
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    again = json.loads(next((tmp_path / "again").glob("*.json")).read_text())
    assert again["sparsity"]["achieved"] == record["sparsity"]["achieved"]
    assert again["metrics"] == record["metrics"]


@pytest.mark.slow
def test_device_map_evaluates_and_prunes_in_place(tmp_path: Path) -> None:
    """`model.device_map=auto` loads through accelerate's placement: from_pretrained is asked for
    the map (here it puts every layer on the CPU, the one device, and the model stays there through
    pruning and evaluation); evaluation and layer-wise pruning then give exactly the numbers of
    the same cell loaded whole, and the record keeps the map."""
    tiny = ["model=tiny-llama", "eval=smoke", "driver.progress=false"]
    saved = run(*tiny, "pruner=dense", "save_model=true", results=tmp_path / "saved")
    assert saved.returncode == 0, saved.stderr[-3000:]
    folder = json.loads(next((tmp_path / "saved").glob("*.json")).read_text())["saved_model"]
    hub = ["model=hub", f"model.name_or_path={folder}", "model.dtype=float32", "model.device=cpu",
           "eval=smoke", "pruner=wanda", "calib.nsamples=2", "calib.seqlen=64", "driver.progress=false"]
    records, seen = {}, {}
    for name, extra in (("whole", []), ("mapped", ["model.device_map=auto"])):
        done = run(*hub, *extra, results=tmp_path / name, probe=tmp_path / f"{name}-probe")
        assert done.returncode == 0, done.stderr[-3000:]
        records[name] = json.loads(next((tmp_path / name).glob("*.json")).read_text())
        seen[name] = probe_reports(tmp_path / f"{name}-probe")
        assert set(seen[name]) == {"loaded-0", "evaluated-0"}
        assert all(report["devices"] == ["cpu"] for report in seen[name].values())
    assert seen["whole"]["loaded-0"]["requested_map"] is None  # loaded whole, then moved to the device
    assert seen["mapped"]["loaded-0"]["requested_map"] == "auto"  # placed by accelerate as it loaded
    assert records["mapped"]["config"]["model"]["device_map"] == "auto"
    assert records["mapped"]["key"] == records["whole"]["key"]  # placement is not part of the cell
    assert records["mapped"]["sparsity"]["achieved"] == records["whole"]["sparsity"]["achieved"] == 0.5
    assert records["mapped"]["metrics"] == records["whole"]["metrics"]
