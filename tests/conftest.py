"""Shared fixtures: offline environment, tiny random models of several families, and run.py
watched from outside (what each process loaded and evaluated)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# Several torch processes share two cores in the suite; busy-waiting OpenMP threads would
# slow each of them many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from core import snapshot  # noqa: E402

VOCAB = 128

# Tiny configs of several architectures: the driver must work on all of them unchanged.
FAMILIES = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, sliding_window=8),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, use_sliding_window=True, sliding_window=8, max_window_layers=1),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=32),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    config = AutoConfig.for_model(family, vocab_size=VOCAB, **FAMILIES[family])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


@pytest.fixture(autouse=True)
def no_cell_snapshot(monkeypatch):
    """Every test starts outside a cell: a cell validated by an earlier test keeps the bytes of the
    files it read (core/snapshot.py), which a later test rewriting a file must not be served."""
    monkeypatch.setattr(snapshot, "_cell", None)


@pytest.fixture
def make_tiny():
    return tiny_model


@pytest.fixture
def calib_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (6, 24), generator=generator)


# run.py with its model loading and evaluation watched, nothing in it changed: each process
# writes $DPB_TEST_PROBE/<loaded|evaluated>-<rank>.json with the device_map it asked
# transformers' from_pretrained for, accelerate's map on the model (hf_device_map), the devices
# of its parameters, and [rows held, out_features] of every pruned matrix.
PROBED_RUN = """
import json, os, runpy, sys
sys.path.insert(0, os.getcwd())
import core.models, evals.suite
from core.structure import model_linears
from transformers import AutoModelForCausalLM

requested = []
real_from_pretrained, real_load, real_evaluate = (AutoModelForCausalLM.from_pretrained,
                                                  core.models.load_model, evals.suite.evaluate)

def report(stage, model):
    seen = {"requested_map": requested[-1] if requested else None,
            "device_map": getattr(model, "hf_device_map", None),
            "devices": sorted({str(p.device) for p in model.parameters()}),
            "rows": {n: [m.weight.shape[0], m.out_features] for n, m in model_linears(model).items()}}
    name = f"{stage}-{os.environ.get('RANK', '0')}.json"
    with open(os.path.join(os.environ["DPB_TEST_PROBE"], name), "w") as handle:
        json.dump(seen, handle)

def from_pretrained(*args, **kwargs):
    requested.append(kwargs.get("device_map"))
    return real_from_pretrained(*args, **kwargs)

def load_model(cfg):
    model, tokenizer = real_load(cfg)
    report("loaded", model)
    return model, tokenizer

def evaluate(model, *args, **kwargs):
    report("evaluated", model)
    return real_evaluate(model, *args, **kwargs)

AutoModelForCausalLM.from_pretrained = from_pretrained
core.models.load_model, evals.suite.evaluate = load_model, evaluate
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
"""


def probed_run(folder: Path) -> tuple[Path, dict[str, str]]:
    """(script to run in place of run.py, environment entries) for a run watched as PROBED_RUN
    says, its reports written to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "probed_run.py"
    script.write_text(PROBED_RUN)
    return script, {"DPB_TEST_PROBE": str(folder)}


def probe_reports(folder: Path) -> dict[str, dict]:
    """What a watched run's processes reported, by `<stage>-<rank>`."""
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
