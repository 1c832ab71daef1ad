"""Strided perplexity: token-weighted mean NLL over windows of `window` tokens moved by `stride`,
scoring only the tokens each window adds (each with at least `window - stride` tokens of
context, except in the first window; a window's first token is never a target, so with
stride == window one token per window goes unscored), plus bits per byte of the scored text."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from core.checks import as_int
from core.data import text_spec
from core.errors import ConfigError


@dataclass
class Perplexity:
    ppl: float
    nll: float  # mean NLL per scored token (nats)
    bpb: float  # bits per UTF-8 byte of the scored text
    tokens: int  # scored tokens
    windows: int
    window: int
    stride: int
    per_window: dict[str, list] = field(default_factory=dict, repr=False)  # nll, tokens, bytes

    def as_dict(self) -> dict[str, Any]:
        """The summary (the per-window arrays are the record's evidence, kept apart)."""
        return {k: v for k, v in asdict(self).items() if k != "per_window"}

    def evidence(self) -> dict[str, Any]:
        """Per window: summed NLL, scored tokens and their bytes, so that any statistic (an
        interval, a paired difference) can be recomputed from the record."""
        return {"kind": "perplexity", **self.per_window}


@dataclass
class Window:
    begin: int
    end: int
    first_scored: int  # absolute index of the first target token scored in this window


def plan_windows(length: int, window: int, stride: int, max_windows: int | None) -> list[Window]:
    """Windows over a sequence of `length` tokens; every token after the first is scored once."""
    if window < 2 or not 0 < stride <= window:
        raise ValueError(f"need window >= 2 and 0 < stride <= window, got window={window}, stride={stride}")
    plans, scored_until = [], 1  # token 0 has no context and is never scored
    begin = 0
    while scored_until < length and (max_windows is None or len(plans) < max_windows):
        end = min(begin + window, length)
        plans.append(Window(begin, end, max(scored_until, begin + 1)))
        scored_until = end
        begin += stride
    return plans


def _byte_counts(text: str, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """UTF-8 bytes covered by each token, from the tokenizer's character offsets."""
    char_bytes = torch.tensor([len(c.encode("utf-8")) for c in text], dtype=torch.long)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.long), char_bytes.cumsum(0)])
    spans = torch.tensor(offsets, dtype=torch.long).reshape(-1, 2)
    return cumulative[spans[:, 1]] - cumulative[spans[:, 0]]


def _encode(tokenizer: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return torch.tensor(encoded["input_ids"], dtype=torch.long), _byte_counts(text, encoded["offset_mapping"])


def encode_text(tokenizer: Any, texts: list[str],
                max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the documents joined by blank lines, and the bytes each token covers.
    With `max_tokens`, only the leading documents that can supply them are tokenized."""
    joined = "\n\n".join(texts)
    if max_tokens is not None:
        head = joined[: 8 * max_tokens]  # natural text has well under 8 characters per token
        ids, byte_counts = _encode(tokenizer, head)
        if ids.numel() <= max_tokens and len(head) < len(joined):
            ids, byte_counts = _encode(tokenizer, joined)
        return ids[:max_tokens], byte_counts[:max_tokens]
    return _encode(tokenizer, joined)


def _require_scored(plans: list[Window], tokens: int, label: str) -> None:
    if not plans:
        raise ConfigError(f"{label}: the text is {tokens} token(s) long, so no token can be scored; "
                          "perplexity needs a text of at least 2 tokens")


def check_scored(tokenizer: Any, texts: list[str], label: str) -> None:
    """Before the model loads: the text scores at least one token (a window's first token is
    never scored); only its first tokens are counted."""
    ids, _ = encode_text(tokenizer, texts, 2)
    _require_scored(plan_windows(ids.numel(), 2, 1, 1), ids.numel(), label)


@torch.no_grad()
def strided_perplexity(model: nn.Module, tokenizer: Any, texts: list[str], window: int, stride: int,
                       max_windows: int | None = None, batch_size: int = 1,
                       progress: bool = True, label: str = "perplexity") -> Perplexity:
    """Perplexity of `texts` (joined by blank lines) under `model`. A text too short to score a
    single token is an error: with nothing scored, the mean would read as a perfect ppl 1.000."""
    limit = None if max_windows is None else (max_windows - 1) * stride + window
    ids, byte_counts = encode_text(tokenizer, texts, limit)
    plans = plan_windows(ids.numel(), window, stride, max_windows)
    _require_scored(plans, ids.numel(), label)
    device = next(model.parameters()).device
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    per_window: dict[str, list] = {"nll": [], "tokens": [], "bytes": []}
    groups: dict[int, list[Window]] = {}
    for plan in plans:  # batch windows of equal length together
        groups.setdefault(plan.end - plan.begin, []).append(plan)
    bar = tqdm(total=len(plans), desc=label, unit="window", disable=not progress)
    for length, group in groups.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            batch = torch.stack([ids[w.begin : w.end] for w in chunk]).to(device)
            logits = model(input_ids=batch).logits.float()
            for row, w in enumerate(chunk):
                first = w.first_scored - w.begin  # position of the first scored target
                targets = batch[row, first:]
                nll = F.cross_entropy(logits[row, first - 1 : length - 1], targets, reduction="sum")
                scored = {"nll": float(nll), "tokens": targets.numel(),
                          "bytes": int(byte_counts[w.first_scored : w.end].sum())}
                total_nll += scored["nll"]
                total_tokens += scored["tokens"]
                total_bytes += scored["bytes"]
                for name, value in scored.items():
                    per_window[name].append(value)
            bar.update(len(chunk))
    bar.close()
    mean = total_nll / total_tokens
    return Perplexity(
        ppl=math.exp(mean), nll=mean, bpb=total_nll / math.log(2) / max(total_bytes, 1),
        tokens=total_tokens, windows=len(plans), window=window, stride=stride, per_window=per_window,
    )


@dataclass(frozen=True)
class PerplexitySettings:
    window: int
    stride: int
    max_windows: int | None
    batch_size: int


def perplexity_settings(cfg: Mapping[str, Any], context: int | None = None) -> PerplexitySettings:
    """Typed `eval.perplexity`: window >= 2 and within the model's `context` (when known),
    0 < stride <= window, max_windows null or >= 1, batch_size >= 1."""
    window = as_int("eval.perplexity.window", cfg.get("window"), 2)
    if context is not None and window > context:
        raise ConfigError(f"eval.perplexity.window={window} exceeds the model's context of {context} "
                          f"positions; use a window <= {context}")
    stride = as_int("eval.perplexity.stride", cfg.get("stride"), 1)
    if stride > window:
        raise ConfigError(f"eval.perplexity.stride={stride} must be <= window ({window})")
    max_windows = cfg.get("max_windows")
    return PerplexitySettings(
        window=window, stride=stride,
        max_windows=None if max_windows is None else as_int("eval.perplexity.max_windows", max_windows, 1),
        batch_size=as_int("eval.perplexity.batch_size", cfg.get("batch_size", 1), 1))


def perplexity_sources(domain: Mapping[str, Any], general: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`<scope>/<name>` -> text spec (a plain path or a mapping, normalised), for the domain's and
    the general perplexity texts."""
    sources = {f"{domain['name']}/{name}": text_spec(spec, f"domain.perplexity.{name}")
               for name, spec in (domain.get("perplexity") or {}).items()}
    sources.update({f"general/{name}": text_spec(spec, f"data.general.perplexity.{name}")
                    for name, spec in (general.get("perplexity") or {}).items()})
    return sources
