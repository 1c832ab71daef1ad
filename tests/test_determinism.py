"""A fixed seed gives identical masks: within one process and across processes (a fresh
interpreter has its own hash seed, allocator state and thread start-up)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.calibration import Calibration
from core.structure import model_linears
from pruners import build
from tests.conftest import VOCAB, tiny_model

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {"magnitude": {}, "wanda": {}, "ria": {}, "sparsegpt": {},
           "dpruner": {"lambda_": 1e9, "cache_dir": None, "scratch": "memory"}}


def mask_digest(method: str) -> str:
    """SHA-256 of every keep-mask after pruning the tiny LLaMA on seeded random windows."""
    ids = torch.randint(0, VOCAB, (6, 24), generator=torch.Generator().manual_seed(0))
    model = tiny_model("llama")
    pruner = build(method, sparsity=0.5, driver={"progress": False, "batch_size": 4}, **OPTIONS[method])
    pruner.prune(model, Calibration(ids=ids, general=ids, domain=ids.flip(0)), torch.device("cpu"))
    digest = hashlib.sha256()
    for name, linear in model_linears(model).items():
        digest.update(name.encode())
        digest.update((linear.weight != 0).numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_same_seed_same_mask_across_processes(method: str) -> None:
    here = mask_digest(method)
    assert here == mask_digest(method)
    code = f"from tests.test_determinism import mask_digest; print(mask_digest({method!r}))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           env=env, timeout=300)
    assert other.returncode == 0, other.stderr[-2000:]
    assert other.stdout.strip().splitlines()[-1] == here
