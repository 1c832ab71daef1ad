"""D-Pruner's domain pass on FSDP across processes (torch's `fully_shard` over a 1-D device mesh:
gloo on CPU, NCCL on CUDA); the single-process pass is domain.py, whose parts this one reuses.

The model the cell loaded is left untouched on the CPU: it is the dense copy the mask is applied
to at the end, so no other copy is kept (with `model.shard_rows` it holds only this rank's rows).
A twin of the same architecture is built on the meta
device, each of its decoder layers sharded by `fully_shard` (dim 0, cut as torch.chunk cuts it),
materialised on the device and filled with this rank's rows; the embeddings, norms and output
layer (never pruned, never updated) stay whole on every rank. Each rank back-propagates its share
of every global batch; FSDP's reduce-scatter averages the shards' gradients, which is the global
batch's mean gradient because every window has the same length (the pruner checks that every
batch divides evenly). The refined gradient, the Taylor score and the SGD step are elementwise, so
each rank scores and steps its own rows with its own rows of G; only the clip's global norm and
the regulariser notes are all-reduced. Masks are chosen on each matrix's scores gathered from
every rank, one matrix at a time, by the same selection as one process."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from core.distributed import all_reduce_, all_reduce_float, current, gather_rows, local_rows
from core.memory import large_blocks_returned_at_once
from core.row_shards import own_rows
from core.structure import decoder_layers, model_linears
from pruners.dpruner.domain import (
    GradientConsumer,
    MatrixScore,
    Pass,
    Tensors,
    backprop_mode,
    matrix_notes,
    run_trajectory,
    score_buffers,
)
from pruners.dpruner.lm_loss import NextTokenLoss
from pruners.dpruner.options import DPrunerOptions
from pruners.driver import batches


class GatheredScores(Mapping[str, torch.Tensor]):
    """Each matrix's importance gathered from every rank's rows when asked for; every rank must
    ask for the same matrices in the same order (the mask stage walks the model's linears)."""

    def __init__(self, shards: dict[str, torch.Tensor], rows: dict[str, int]) -> None:
        self.shards, self.rows = shards, rows

    def __getitem__(self, name: str) -> torch.Tensor:
        return gather_rows(self.shards[name], self.rows[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.shards)

    def __len__(self) -> int:
        return len(self.shards)


@torch.no_grad()
def shard_twin(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `model` whose decoder layers are FSDP-sharded over the world, without ever
    holding a second full copy (built on the meta device, then only this rank's rows filled)."""
    with torch.device("meta"):
        twin = type(model)(copy.deepcopy(model.config))
    twin.tie_weights()
    twin.to(dtype=next(model.parameters()).dtype)
    mesh = init_device_mesh(device.type, (current().size,))
    for layer in decoder_layers(twin):
        fully_shard(layer, mesh=mesh)
    twin.to_empty(device=device)
    source, buffers = model.state_dict(keep_vars=True), dict(model.named_buffers())
    for name, param in twin.named_parameters():
        if isinstance(param, DTensor):  # the loaded model holds whole matrices, or its rows already
            whole = source[name].shape[0] == param.shape[0]
            param.to_local().copy_(local_rows(source[name]) if whole else source[name])
        else:
            param.copy_(source[name])
    for name, buffer in twin.named_buffers():
        buffer.copy_(buffers[name])
    return twin.eval()


def _global_notes(matrices: list[MatrixScore], rows: dict[str, int], total: int) -> dict[str, dict]:
    """The regulariser notes over whole matrices: each rank's mean |g| weighted by its share."""
    for m in matrices:
        share = m.importance.shape[0] / rows[m.name]
        for sums in (m.grad_sum, m.reg_sum):
            local = sums * share if share > 0 else torch.zeros_like(sums)
            sums.copy_(all_reduce_(local))
    return matrix_notes(matrices, total)


def _score_on_twin(model: nn.Module, ids: torch.Tensor, G: Tensors, options: DPrunerOptions,
                   device: torch.device, store: torch.device, progress: bool) -> list[MatrixScore]:
    """The trajectory on a sharded twin of `model` (freed on return): this rank's scores."""
    world = current()
    linears = model_linears(model)
    dense = {name: own_rows(linear) for name, linear in linears.items()}
    twin = shard_twin(model, device)
    params = [linear.weight for linear in model_linears(twin).values()]
    with torch.no_grad():
        matrices = [score_buffers(name, p.to_local(), store, device)
                    for name, p in zip(linears, params, strict=True)]
    consumer = GradientConsumer(options, G, dense)
    chunks = [chunk[world.share(chunk.shape[0])] for chunk in batches(ids, options.batch_size)]
    with backprop_mode(twin, params, options.gradient_checkpointing, eager=False):
        loss = NextTokenLoss(twin, options.loss_chunk, ids[:1, :16].to(device))

        def backward(batch: torch.Tensor, now: Pass) -> None:
            consumer.current = now
            loss.backward(batch.to(device))
            for m, param in zip(matrices, params, strict=True):
                grad = param.grad.to_local()
                param.grad = None
                consumer.take(m, grad.float())
            now.sqnorm = all_reduce_float(now.sqnorm)  # the clip's norm is the whole model's

        run_trajectory(options, chunks, options.steps(ids.shape[0]), backward, progress)
    return matrices


def sharded_domain_importance(model: nn.Module, ids: torch.Tensor, G: Tensors, options: DPrunerOptions,
                              device: torch.device, store: torch.device,
                              progress: bool = True) -> tuple[GatheredScores, dict[str, dict]]:
    """I of every pruned matrix over the domain windows `ids` (the same global batches as one
    process, each split across the ranks), as shards gathered on demand, and the notes. `G`
    holds this rank's rows (compute_general_importance with `own_rows`). The loaded model waits
    unchanged on the CPU meanwhile."""
    model.to("cpu")
    with large_blocks_returned_at_once(options.returns_freed_memory(device, store)):
        matrices = _score_on_twin(model, ids, G, options, device, store, progress)
    rows = {name: linear.out_features for name, linear in model_linears(model).items()}
    notes = _global_notes(matrices, rows, options.steps(ids.shape[0]))
    model.to(device)
    return GatheredScores({m.name: m.importance for m in matrices}, rows), notes
