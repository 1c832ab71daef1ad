"""Which parts of a model are pruned, for every architecture: every nn.Linear inside the decoder
blocks (never embeddings, norms or the LM head), and how sparse they are."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.errors import ConfigError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the ModuleList holding the most parameters."""
    best, best_size = None, -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = module, size
    if best is None:
        raise ConfigError(f"{type(model).__name__} has no stack of decoder layers to prune")
    return best


def prunable_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside one decoder block, by its name within the block."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


def model_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable nn.Linear of the model, named `layers.<i>.<name>`."""
    found = {
        f"layers.{i}.{name}": linear
        for i, layer in enumerate(decoder_layers(model))
        for name, linear in prunable_linears(layer).items()
    }
    if not found:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear inside its decoder layers "
                          "(e.g. GPT-2's Conv1D); such models are not supported")
    return found


def zero_count(tensor: torch.Tensor) -> int:
    return int((tensor == 0).sum())


def sparsity_summary(model: nn.Module) -> dict[str, Any]:
    """Fractions of zeros: over the prunable matrices, over all parameters, and per matrix."""
    per_matrix = {}
    zeros = total = 0
    with torch.no_grad():
        for name, linear in model_linears(model).items():
            z = zero_count(linear.weight)
            per_matrix[name] = z / linear.weight.numel()
            zeros += z
            total += linear.weight.numel()
        all_zeros = sum(zero_count(p) for p in model.parameters())
    all_total = sum(p.numel() for p in model.parameters())
    return {
        "achieved": zeros / max(total, 1),
        "model": all_zeros / max(all_total, 1),
        "per_matrix": per_matrix,
    }
