"""An interrupted D-Pruner domain pass resumes where it saved and ends exactly where an
uninterrupted pass ends: the same importance, the same weights along the trajectory, the same
record metrics; the saved state is removed once the record exists."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from core.calibration import domain_windows
from core.data import resolve_data_root
from core.models import load_model
from core.paths import CONF_DIR
from core.structure import model_linears
from pruners.dpruner.domain import domain_importance
from pruners.dpruner.options import DPrunerOptions
from pruners.dpruner.resume import STATE_FILE, DomainPassResume

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
# lagged clip and weights moving along the schedule: every piece of state the pass carries matters
OPTIONS = {"lambda_": 0.0, "lr": 0.5, "warmup_ratio": 0.25, "max_grad_norm": 1e-2, "batch_size": 2,
           "resume_minutes": 0.0}


class Interrupted(Exception):
    """Stands for the job being killed right after a save."""


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model(OmegaConf.load(CONF_DIR / "model/tiny-llama.yaml"))
    windows = {}
    for domain in ("legal", "healthcare"):
        calib = OmegaConf.load(CONF_DIR / f"domain/{domain}.yaml").calib
        calib.max_tokens = 20_000
        windows[domain] = domain_windows(tokenizer, calib, resolve_data_root(None), 8, 32, 0)
    return model, windows


def domain_pass(tiny, domain: str, resume: DomainPassResume | None, **options):
    """(importance, notes, weights afterwards) of a pass on a fresh copy of the tiny model."""
    model = copy.deepcopy(tiny[0])
    settings = DPrunerOptions(**{**OPTIONS, **options})
    scores, notes = domain_importance(model, tiny[1][domain], {}, None, settings, CPU, CPU, progress=False,
                                      resume=resume)
    return scores, notes, {n: m.weight.detach().clone() for n, m in model_linears(model).items()}


def interrupted_after(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass from here on is killed right after it saves at `step`."""
    save = DomainPassResume.after_step

    def save_then_stop(self, done, *args, **kwargs):
        save(self, done, *args, **kwargs)
        if done == step:
            raise Interrupted

    monkeypatch.setattr(DomainPassResume, "after_step", save_then_stop)


@pytest.mark.parametrize("clip", ["lagged", "two_pass"])
def test_a_resumed_pass_equals_an_uninterrupted_one(tiny, tmp_path: Path, clip: str,
                                                    monkeypatch: pytest.MonkeyPatch):
    options = DPrunerOptions(**{**OPTIONS, "clip": clip})
    ids = tiny[1]["legal"]
    straight = domain_pass(tiny, "legal", None, clip=clip)
    with monkeypatch.context() as patched:
        interrupted_after(2, patched)
        with pytest.raises(Interrupted):
            domain_pass(tiny, "legal", DomainPassResume.for_pass(tmp_path, options, ids), clip=clip)
    assert (tmp_path / STATE_FILE).exists()
    resume = DomainPassResume.for_pass(tmp_path, options, ids)
    resumed = domain_pass(tiny, "legal", resume, clip=clip)
    assert resume.report()["resumed_at_step"] == 2 and resume.report()["seconds_before_resume"] > 0
    for name in straight[0]:
        assert torch.equal(resumed[0][name], straight[0][name]), name  # importance, bit for bit
        assert torch.equal(resumed[2][name], straight[2][name]), name  # weights along the trajectory
        assert not torch.equal(straight[2][name], model_linears(tiny[0])[name].weight)  # they did move
    assert resumed[1] == straight[1]


def test_state_of_other_windows_or_settings_is_not_used(tiny, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    options = DPrunerOptions(**OPTIONS)
    with monkeypatch.context() as patched:
        interrupted_after(2, patched)
        with pytest.raises(Interrupted):
            domain_pass(tiny, "legal", DomainPassResume.for_pass(tmp_path, options, tiny[1]["legal"]))
    other_windows = DomainPassResume.for_pass(tmp_path, options, tiny[1]["healthcare"])
    assert domain_pass(tiny, "healthcare", other_windows)[0].keys()
    assert other_windows.report() is None  # started over
    other_lr = DPrunerOptions(**{**OPTIONS, "lr": 0.25})
    assert DomainPassResume.for_pass(tmp_path, other_lr, tiny[1]["legal"]).fingerprint != \
        DomainPassResume.for_pass(tmp_path, options, tiny[1]["legal"]).fingerprint
    where = DPrunerOptions(**{**OPTIONS, "resume_minutes": 5.0, "scratch": "memory"})
    assert DomainPassResume.for_pass(tmp_path, where, tiny[1]["legal"]).fingerprint == \
        DomainPassResume.for_pass(tmp_path, options, tiny[1]["legal"]).fingerprint  # not what is computed
    assert DomainPassResume.for_pass(None, options, tiny[1]["legal"]) is None
    never = DPrunerOptions(**{**OPTIONS, "resume_minutes": None})
    assert DomainPassResume.for_pass(tmp_path, never, tiny[1]["legal"]) is None


def test_a_truncated_state_file_starts_the_pass_over(tiny, tmp_path: Path):
    options = DPrunerOptions(**OPTIONS)
    (tmp_path / STATE_FILE).write_bytes(b"not a torch file")
    resume = DomainPassResume.for_pass(tmp_path, options, tiny[1]["legal"])
    assert torch.equal(domain_pass(tiny, "legal", resume)[0]["layers.0.mlp.up_proj"],
                       domain_pass(tiny, "legal", None)[0]["layers.0.mlp.up_proj"])
    assert resume.report() is None


KILLED_AFTER_SAVE = """
import os, runpy, sys
sys.path.insert(0, os.getcwd())
from pruners.dpruner.resume import DomainPassResume
save = DomainPassResume.after_step
def save_then_stop(self, done, *args, **kwargs):
    save(self, done, *args, **kwargs)
    if done == int(os.environ["DPB_TEST_STOP_AT"]):
        raise KeyboardInterrupt
DomainPassResume.after_step = save_then_stop
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
"""


def run_cell(results: Path, script: str = "run.py", **env: str) -> subprocess.CompletedProcess:
    args = [sys.executable, script, "model=tiny-llama", "eval=smoke", "pruner=dpruner", "logger=none",
            "calib.nsamples=4", "calib.seqlen=32", "pruner.domain_calib.nsamples=8",
            "pruner.domain_calib.seqlen=32", "pruner.batch_size=2", "pruner.resume_minutes=0",
            "driver.progress=false", f"results.dir={results}"]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.mark.slow
def test_run_py_resumes_a_killed_cell_to_the_same_record(tmp_path: Path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cell(straight).returncode == 0
    killer = tmp_path / "killed_after_save.py"
    killer.write_text(KILLED_AFTER_SAVE)
    killed = run_cell(resumed, str(killer), DPB_TEST_STOP_AT="3")
    assert killed.returncode != 0 and not list(resumed.glob("*.json"))
    assert len(list((resumed / "resume").glob(f"*/{STATE_FILE}"))) == 1
    again = run_cell(resumed)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resume: domain pass at step 3 of 4" in again.stdout
    first, second = (json.loads(next(folder.glob("*.json")).read_text()) for folder in (straight, resumed))
    assert first["key"] == second["key"]
    assert second["metrics"] == first["metrics"]
    assert second["prune"]["stages"]["domain"]["resumed_at_step"] == 3
    assert "resumed_at_step" not in first["prune"]["stages"]["domain"]
    assert not (resumed / "resume").exists()  # removed with the record
