"""Shared fixtures: offline environment, tiny random models of several families."""

from __future__ import annotations

import os

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
