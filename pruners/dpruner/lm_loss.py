"""Back-propagation of the mean next-token loss of a batch, with the output layer run a chunk of
tokens at a time. A small model with a large vocabulary (the default: hidden 576, vocabulary
49,152) otherwise holds [batch, seq, vocab] logits three times over (logits, log-softmax, their
gradient), more than all its checkpointed activations. Chunked, each chunk's logits are
computed, differentiated and freed before the next; the gradient of the hidden states is then
sent back through the model in one backward, so nothing is computed twice.

Chunking is used only when the model's logits are exactly its output embedding applied to its
base model's last hidden state (checked once on a probe): models that scale or soft-cap their
logits fall back to their own loss."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
IGNORE = -100  # label of a padding position: no loss, no gradient


def _plain_head(model: nn.Module, probe: torch.Tensor) -> bool:
    """Whether logits == output_embeddings(base_model(ids).last_hidden_state) on `probe`."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(base, nn.Module) or base is model or head is None:
        return False
    with torch.no_grad():
        logits = model(input_ids=probe, use_cache=False).logits
        hidden = getattr(base(input_ids=probe, use_cache=False), "last_hidden_state", None)
        if hidden is None or hidden.shape[:-1] != logits.shape[:-1]:
            return False
        return torch.allclose(head(hidden).float(), logits.float(), rtol=1e-4, atol=1e-4)


class NextTokenLoss:
    """Mean cross-entropy of every next token of every window; never scaled, so gradients
    reach the importance scores exactly as the loss defines them."""

    def __init__(self, model: nn.Module, chunk_tokens: int | None, probe: torch.Tensor) -> None:
        self.model = model
        self.chunk = chunk_tokens
        self.chunked = chunk_tokens is not None and _plain_head(model, probe)
        if chunk_tokens is not None and not self.chunked:
            log.info("logits are not a plain head over the base model; using the model's own loss")

    def __call__(self, batch: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The differentiable loss (the model's own computation; for double backward). With a
        `mask` (right-padded whole examples), padding is attended to by nothing and scored nowhere."""
        if mask is None:
            return self.model(input_ids=batch, labels=batch, use_cache=False).loss
        labels = batch.masked_fill(mask == 0, IGNORE)
        return self.model(input_ids=batch, attention_mask=mask, labels=labels, use_cache=False).loss

    def backward(self, batch: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        """Back-propagate the loss of `batch` (mean over its real next tokens) into the
        parameters; returns its value."""
        if not self.chunked:
            loss = self(batch, mask)
            loss.backward()
            return float(loss.detach())
        padding = {} if mask is None else {"attention_mask": mask}
        hidden = self.model.base_model(input_ids=batch, use_cache=False, **padding).last_hidden_state
        inputs = hidden.detach()[:, :-1].reshape(-1, hidden.shape[-1])
        targets = (batch if mask is None else batch.masked_fill(mask == 0, IGNORE))[:, 1:]
        targets = targets.reshape(-1).to(hidden.device)
        scored = targets.numel() if mask is None else int((targets != IGNORE).sum())
        head = self.model.get_output_embeddings()
        grads, total = [], 0.0
        for start in range(0, targets.numel(), self.chunk):
            part = inputs[start : start + self.chunk].detach().requires_grad_(True)
            logits = head(part).float()
            loss = F.cross_entropy(logits, targets[start : start + self.chunk], reduction="sum",
                                   ignore_index=IGNORE)
            loss = loss / scored
            grads.append(torch.autograd.grad(loss, part)[0])
            total += float(loss.detach())
        grad_hidden = torch.zeros_like(hidden)
        grad_hidden[:, :-1] = torch.cat(grads).reshape(hidden.shape[0], -1, hidden.shape[-1])
        hidden.backward(grad_hidden)
        return total
