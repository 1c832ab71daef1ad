"""Several processes (gloo, CPU, 2 ranks, tiny models; a spawn takes 25-50 s here, so those tests
are slow) against the single-process computation: all-reduced layer-wise statistics give the same
masks, D-Pruner's FSDP domain pass the same
importance, and a process that dies fails the cell on rank 0 with one line and no record."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoConfig, AutoModelForCausalLM

from core import distributed
from core.calibration import Calibration
from core.errors import ConfigError
from core.row_shards import load_row_shards
from core.structure import model_linears
from pruners import Allocation, DriverSettings, build
from pruners.dpruner.domain import domain_importance
from pruners.dpruner.general import compute_general_importance
from pruners.dpruner.options import DPrunerOptions
from pruners.dpruner.pruner import check_world
from pruners.dpruner.sharded import sharded_domain_importance
from pruners.mask_update import update_kept_weights
from pruners.masks import select_mask
from tests.conftest import VOCAB, probe_reports, probed_run, tiny_model

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
QUIET = DriverSettings(progress=False)
WORLD = 2


def windows(n: int, seqlen: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: linear.weight != 0 for name, linear in model_linears(model).items()}


def layerwise(method: str, allocation: Allocation | None = None) -> dict[str, torch.Tensor]:
    """A method's masks on the tiny LLaMA (its share of the windows on each rank)."""
    model = tiny_model("llama")
    pruner = build(method, sparsity=0.5, driver={"progress": False, "batch_size": 2}, allocation=allocation)
    pruner.prune(model, Calibration(ids=windows(8, 24, 0)), CPU)
    return {**masks(model), "layer_sparsities": torch.tensor(pruner.layers.sparsities)}


def general() -> dict[str, torch.Tensor]:
    model, ids = tiny_model("llama"), windows(8, 24, 0)
    return dict(compute_general_importance(model, ids, DPrunerOptions(), QUIET, CPU, CPU)[0])


def general_rows() -> dict[str, torch.Tensor]:
    """Each rank keeps only its rows of G (in memory, or cut from the file as it is read); the
    gathered rows are the whole G."""
    model, ids = tiny_model("llama"), windows(8, 24, 0)
    rows = {name: linear.weight.shape[0] for name, linear in model_linears(model).items()}
    gathered = {}
    with tempfile.TemporaryDirectory() as folder:
        for scratch in (None, Path(folder)):
            G, _ = compute_general_importance(model, ids, DPrunerOptions(), QUIET, CPU, CPU, scratch,
                                              own_rows=True)
            for name in G:
                own = distributed.local_rows(torch.empty(rows[name])).shape[0]
                assert G[name].shape[0] == own < rows[name]
                where = "file" if scratch else "memory"
                gathered[f"{name}@{where}"] = distributed.gather_rows(G[name], rows[name])
    return gathered


def domain(update_weights: bool) -> dict[str, torch.Tensor]:
    """D-Pruner's importance I: single process, or on FSDP (gathered) across the ranks."""
    options = DPrunerOptions(update_weights=update_weights, batch_size=4, lambda_=1e6)
    model = tiny_model("llama")
    sharded = distributed.current().distributed
    G, _ = compute_general_importance(model, windows(8, 24, 0), options, QUIET, CPU, CPU, own_rows=sharded)
    ids = windows(8, 24, 1)
    if sharded:
        scores, _ = sharded_domain_importance(model, ids, G, options, CPU, CPU, progress=False)
        return {name: scores[name] for name in scores}
    dense = {name: linear.weight.detach().clone() for name, linear in model_linears(model).items()}
    return domain_importance(model, ids, G, dense, options, CPU, CPU, progress=False)[0]


def reconstructed() -> dict[str, torch.Tensor]:
    """The tiny LLaMA's weights after reconstruction under a fixed mask (each matrix's larger
    half by magnitude), from Hessians summed over every rank's share of the windows."""
    model = tiny_model("llama")
    keep = {name: linear.weight.abs() > linear.weight.abs().median()
            for name, linear in model_linears(model).items()}
    driver = DriverSettings(progress=False, batch_size=2)
    update_kept_weights(model, windows(8, 24, 0), keep.__getitem__, 0.01, driver, CPU)
    return {name: linear.weight.detach().clone() for name, linear in model_linears(model).items()}


def row_sharded_prunes() -> dict[str, torch.Tensor]:
    """Wanda and D-Pruner on the saved tiny LLaMA loaded whole on every rank, and loaded as each
    rank's rows (model.shard_rows); rank 0's pruned weights, and the rows each way held."""
    folder = Path(os.environ["DPB_TEST_SAVED_MODEL"])
    calibration = Calibration(ids=windows(8, 24, 0), general=windows(8, 24, 0), domain=windows(8, 24, 1))
    out = {}
    for method, options in (("wanda", {}), ("dpruner", {"batch_size": 4, "lambda_": 1e6})):
        for how in ("whole", "rows"):
            if how == "rows":
                model = load_row_shards(AutoConfig.from_pretrained(folder), folder, torch.float32)
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            held = sum(linear.weight.numel() for linear in model_linears(model).values())
            out[f"{method}/{how}/held"] = torch.tensor(held)
            pruner = build(method, sparsity=0.5, driver={"progress": False, "batch_size": 2}, **options)
            pruner.prune(model, calibration, CPU)
            out.update({f"{method}/{how}/{name}": linear.weight.detach().clone()
                        for name, linear in model_linears(model).items()})
    return out


TASKS = {"wanda": lambda: layerwise("wanda"), "sparsegpt": lambda: layerwise("sparsegpt"), "general": general,
         "general_rows": general_rows,
         "sparsegpt_owl": lambda: layerwise("sparsegpt", Allocation("owl", threshold=2.0, lambda_=0.1)),
         "reconstruct": reconstructed,
         "domain_frozen": lambda: domain(False), "domain_trajectory": lambda: domain(True),
         "row_shards": row_sharded_prunes}


def _worker(rank: int, port: int, task: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.start(distributed.world_from_env(), CPU)
    try:
        result = TASKS[task]()
        if rank == 0:
            torch.save(result, out)
    finally:
        distributed.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_two_ranks(task: str, tmp_path: Path) -> Any:
    out = tmp_path / f"{task}.pt"
    mp.spawn(_worker, args=(free_port(), task, str(out)), nprocs=WORLD)
    return torch.load(out)


def agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    same = sum(int((a[n] == b[n]).sum()) for n in a)
    return same / sum(t.numel() for t in a.values())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "sparsegpt_owl"])
def test_all_reduced_statistics_give_the_single_process_masks(method: str, tmp_path: Path) -> None:
    assert agreement(on_two_ranks(method, tmp_path), TASKS[method]()) == 1.0


@pytest.mark.slow
def test_reconstruction_on_two_ranks_keeps_the_mask_and_matches_one_process(tmp_path: Path) -> None:
    """Same mask exactly; the kept weights differ only by the rounding of the Hessians' reduction
    order, which the OBS update carries into every later column."""
    two, one = on_two_ranks("reconstruct", tmp_path), TASKS["reconstruct"]()
    assert agreement({n: t != 0 for n, t in two.items()}, {n: t != 0 for n, t in one.items()}) == 1.0
    for name in one:
        assert torch.allclose(two[name], one[name], rtol=1e-4, atol=1e-6), name
    dense = model_linears(tiny_model("llama"))
    assert any(not torch.equal(one[name], dense[name].weight * (one[name] != 0))
               for name in one)  # the update moved kept weights: the test compares reconstructions


@pytest.mark.slow
def test_all_reduced_hessians_give_the_single_process_general_importance(tmp_path: Path) -> None:
    sharded, single = on_two_ranks("general", tmp_path), general()
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-7)
        assert torch.equal(select_mask(sharded[name], 0.5), select_mask(single[name], 0.5))


@pytest.mark.slow
def test_each_rank_keeps_only_its_rows_of_the_general_importance(tmp_path: Path) -> None:
    single = general()
    for name, gathered in on_two_ranks("general_rows", tmp_path).items():
        torch.testing.assert_close(gathered, single[name.split("@")[0]], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_fsdp_domain_pass_frozen_equals_one_process(tmp_path: Path) -> None:
    """Same global batches, frozen weights: only the reduction order of the gradient differs."""
    sharded, single = on_two_ranks("domain_frozen", tmp_path), domain(False)
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-9)
        assert torch.equal(select_mask(sharded[name], 0.5), select_mask(single[name], 0.5))


@pytest.mark.slow
def test_fsdp_domain_pass_along_the_trajectory_is_close(tmp_path: Path) -> None:
    """Along the SGD trajectory each step's rounding difference (~1e-7 relative, the gradient's
    reduction order) moves the weights that the next step's gradient is taken at, so the
    importances agree to a tolerance and the masks to near-ties only."""
    sharded, single = on_two_ranks("domain_trajectory", tmp_path), domain(True)
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-3, atol=1e-8)
    mask = {n: select_mask(sharded[n], 0.5) for n in single}
    assert agreement(mask, {n: select_mask(single[n], 0.5) for n in single}) >= 0.999


@pytest.mark.slow
def test_row_sharded_weights_prune_exactly_as_whole_ones(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank holding only its rows (gathered one layer at a time for the layer-wise passes,
    FSDP's own shards for the domain pass) changes where the weights live, not what is computed:
    rank 0's pruned model equals the whole-loaded 2-rank prune exactly, at half the rows held."""
    tiny_model("llama", seed=5).save_pretrained(tmp_path / "model")
    monkeypatch.setenv("DPB_TEST_SAVED_MODEL", str(tmp_path / "model"))
    out = on_two_ranks("row_shards", tmp_path)
    for method in ("wanda", "dpruner"):
        assert 2 * out.pop(f"{method}/rows/held") == out.pop(f"{method}/whole/held")
        whole = {k.split("/", 2)[2]: v for k, v in out.items() if k.startswith(f"{method}/whole/")}
        for name, weight in whole.items():
            assert torch.equal(out[f"{method}/rows/{name}"], weight), (method, name)
        zeros = sum(int((weight == 0).sum()) for weight in whole.values())
        assert zeros == sum(weight.numel() for weight in whole.values()) // 2


@pytest.mark.slow
def test_a_cell_on_row_sharded_processes_records_what_whole_loading_records(tmp_path: Path) -> None:
    """run.py under torchrun, D-Pruner on a saved tiny LLaMA: with model.shard_rows each process
    loads only its rows of every pruned matrix (FSDP's dim-0 cut), rank 0 alone evaluates the
    gathered whole matrices, placed by `model.device_map=auto` (the CPU here); and it writes the
    same metrics as every process loading the whole model."""
    saved = subprocess.run([sys.executable, "run.py", "model=tiny-llama", "pruner=dense", "eval=smoke",
                            "save_model=true", "logger=none", f"results.dir={tmp_path / 'saved'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert saved.returncode == 0, saved.stderr[-3000:]
    folder = json.loads(next((tmp_path / "saved").glob("*.json")).read_text())["saved_model"]
    cell = ["model=hub", f"model.name_or_path={folder}", "model.dtype=float32",
            "model.device=cpu", "pruner=dpruner", "pruner.batch_size=2", "pruner.domain_calib.nsamples=4",
            "pruner.domain_calib.seqlen=32", "calib.nsamples=2", "calib.seqlen=32", "pruner.cache_dir=null",
            "eval=smoke", "logger=none", "driver.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    records, seen = {}, {}
    for how, extra in (("whole", []), ("rows", ["model.shard_rows=true", "model.device_map=auto"])):
        script, watched = probed_run(tmp_path / f"{how}-probe")
        args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}", str(script), *cell, *extra, f"results.dir={tmp_path / how}"]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**env, **watched})
        assert done.returncode == 0, done.stderr[-3000:]
        [path] = (tmp_path / how).glob("*.json")
        records[how] = json.loads(path.read_text())
        seen[how] = probe_reports(tmp_path / f"{how}-probe")
        assert set(seen[how]) == {"loaded-0", "loaded-1", "evaluated-0"}  # rank 0 alone evaluates
        assert all(held == rows for held, rows in seen[how]["evaluated-0"]["rows"].values())
    for rank in range(2):
        assert all(held == rows for held, rows in seen["whole"][f"loaded-{rank}"]["rows"].values())
        for name, (held, rows) in seen["rows"][f"loaded-{rank}"]["rows"].items():
            chunk = -(-rows // 2)
            assert held == len(range(rows)[rank * chunk : (rank + 1) * chunk]) < rows, (rank, name)
    assert seen["whole"]["evaluated-0"]["device_map"] is None
    assert seen["rows"]["evaluated-0"]["device_map"]  # rank 0's evaluation placed by accelerate's map
    assert records["rows"]["config"]["model"]["shard_rows"] is True
    assert records["rows"]["key"] == records["whole"]["key"]  # where the weights live is not the cell
    assert records["rows"]["world"] == {"size": 2, "backend": "gloo"}
    assert records["rows"]["sparsity"] == records["whole"]["sparsity"]
    assert records["rows"]["metrics"] == records["whole"]["metrics"]


def test_uneven_domain_batches_are_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="pruner.batch_size=3 must be a multiple of the 2 processes"):
        check_world(DPrunerOptions(batch_size=3), distributed.World(0, 2))
    with pytest.raises(ConfigError, match="exact"):
        check_world(DPrunerOptions(regularizer_grad="exact"), distributed.World(0, 2))


def test_launcher_variables() -> None:
    assert distributed.world_from_env({}) == distributed.World()
    assert distributed.world_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}) == \
        distributed.World(1, 4, 1)
    with pytest.raises(ConfigError, match="outside a world"):
        distributed.world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert [distributed.World(r, 3).share(8) for r in range(3)] == [slice(0, 2), slice(2, 5), slice(5, 8)]


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks on a one-GPU node: refused before any CUDA call (NCCL needs a GPU per rank)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(ConfigError, match="1 visible GPU"):
        distributed.start(distributed.World(1, 2, 1), torch.device("cuda"))


DIE_ON_RANK_1 = """
import os, runpy, sys, time
sys.path.insert(0, os.getcwd())
import pruners.driver as driver
real = driver.broadcast_
def broadcast_(tensor, src=0):
    if os.environ["RANK"] == "1":
        os._exit(3)
    time.sleep(float(os.environ["RANK_0_DELAY"]))
    return real(tensor, src)
driver.broadcast_ = broadcast_
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("rank_0_delay", [0, 60])
def test_a_dead_rank_fails_the_cell_on_rank_0_with_one_line(tmp_path: Path, rank_0_delay: int) -> None:
    """Rank 1 dies in the middle of pruning: one line on rank 0, no record. Without a delay rank 0's
    collective usually fails first; with one, torchrun terminates rank 0 (SIGTERM) before it."""
    script = tmp_path / "die.py"
    script.write_text(DIE_ON_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RANK_0_DELAY": str(rank_0_delay)}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={free_port()}", str(script), "model=tiny-llama", "eval=smoke", "logger=none",
            "pruner=wanda",
            f"results.dir={tmp_path / 'runs'}", "driver.progress=false"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another of the 2 processes" in errors[0], done.stderr[-3000:]
    assert not list((tmp_path / "runs").glob("*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["sparsity=1.5", "pruner=wandaa"])
def test_a_bad_setting_under_torchrun_is_one_line_in_all(tmp_path: Path, bad: str) -> None:
    """Every rank checks the setting; rank 0 alone says what is wrong (one `error:` line in all)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={free_port()}", "run.py", "model=tiny-llama", "eval=smoke", "logger=none",
            "pruner=wanda", "driver.progress=false", f"results.dir={tmp_path / 'runs'}", bad]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-3000:]
    assert bad.split("=")[1] in errors[0]
    ours = [line for line in done.stderr.splitlines()
            if 'run.py", line' in line and "distributed" not in line]
    assert not ours, done.stderr[-3000:]  # torchrun's own report of a failed child may follow
    assert not list((tmp_path / "runs").glob("*.json"))
