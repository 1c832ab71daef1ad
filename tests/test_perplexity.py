"""Strided perplexity against direct computations on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evals.perplexity import plan_windows, strided_perplexity


class CharTokenizer:
    """One token per character (ids = code points mod vocab); offsets for bits per byte."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False):
        out = {"input_ids": [ord(c) % self.vocab for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


@pytest.mark.parametrize(("length", "window", "stride"),
                         [(100, 16, 16), (100, 16, 4), (37, 10, 7), (5, 16, 8)])
def test_windows_score_each_token_once(length: int, window: int, stride: int) -> None:
    scored = []
    for w in plan_windows(length, window, stride, None):
        assert w.end - w.begin <= window and w.first_scored > w.begin
        scored.extend(range(w.first_scored, w.end))
    assert len(scored) == len(set(scored))
    unscored = set(range(1, length)) - set(scored)
    if stride < window:
        assert not unscored
    else:  # a non-overlapping window cannot score its own first token
        assert unscored == {w.begin for w in plan_windows(length, window, stride, None)} - {0}


def test_single_window_equals_model_loss(make_tiny) -> None:
    model = make_tiny("llama")
    text = "the quick brown fox jumps over the lazy dog"
    tokenizer = CharTokenizer(128)
    result = strided_perplexity(model, tokenizer, [text], window=64, stride=64, progress=False)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert result.tokens == len(text) - 1 and result.windows == 1
    assert math.isclose(result.ppl, math.exp(float(loss)), rel_tol=1e-5)
    assert math.isclose(result.bpb, float(loss) / math.log(2), rel_tol=1e-5)  # ASCII: 1 byte per token


def test_strided_equals_explicit_window_sum(make_tiny) -> None:
    """Overlapping windows: the NLL of each new token given its window's context, summed."""
    model = make_tiny("llama")
    text = "abcdefghijklmnopqrstuvwxyz" * 3
    tokenizer = CharTokenizer(128)
    ids = torch.tensor(tokenizer(text)["input_ids"])
    window, stride = 20, 8
    total, count = 0.0, 0
    with torch.no_grad():
        for w in plan_windows(len(ids), window, stride, None):
            logits = model(input_ids=ids[w.begin : w.end].unsqueeze(0)).logits[0]
            for pos in range(w.first_scored, w.end):
                total += float(F.cross_entropy(logits[pos - w.begin - 1], ids[pos]))
                count += 1
    result = strided_perplexity(model, tokenizer, [text], window, stride, batch_size=3, progress=False)
    assert result.tokens == count
    assert math.isclose(result.nll, total / count, rel_tol=1e-5)


def test_max_windows_bounds_the_work(make_tiny) -> None:
    model = make_tiny("llama")
    result = strided_perplexity(model, CharTokenizer(128), ["x" * 500], 32, 32, max_windows=3, progress=False)
    assert result.windows == 3 and result.tokens == 3 * 31


def test_multibyte_characters_count_as_bytes(make_tiny) -> None:
    model = make_tiny("llama")
    ascii_result = strided_perplexity(model, CharTokenizer(128), ["ab" * 20], 64, 64, progress=False)
    wide_result = strided_perplexity(model, CharTokenizer(128), ["éb" * 20], 64, 64, progress=False)
    # 'é' is 2 bytes: more bytes for the same token count lowers bits per byte per nat
    assert wide_result.bpb / wide_result.nll < ascii_result.bpb / ascii_result.nll
