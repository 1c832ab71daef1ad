"""The chunked next-token loss equals the model's own loss and gradients, and steps aside for
models whose logits are more than a plain head over the base model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pruners.dpruner.lm_loss import NextTokenLoss


def test_chunked_loss_equals_the_models_loss(make_tiny, calib_ids):
    model = make_tiny("llama")
    chunked = NextTokenLoss(model, chunk_tokens=7, probe=calib_ids[:1, :8])
    assert chunked.chunked
    own = NextTokenLoss(model, chunk_tokens=None, probe=calib_ids[:1, :8])
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    results = []
    for loss in (chunked, own):
        value = loss.backward(calib_ids)
        results.append((value, weight.grad))
        weight.grad = None
    assert results[0][0] == pytest.approx(float(own(calib_ids).detach()), rel=1e-6)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-8)


def test_soft_capped_logits_fall_back(calib_ids):
    config = AutoConfig.for_model("gemma2", vocab_size=128, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=8, final_logit_softcapping=0.5)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    loss = NextTokenLoss(model, chunk_tokens=7, probe=calib_ids[:1, :8])
    assert not loss.chunked
    expected = model(input_ids=calib_ids, labels=calib_ids).loss
    assert loss.backward(calib_ids) == pytest.approx(float(expected.detach()), rel=1e-6)
