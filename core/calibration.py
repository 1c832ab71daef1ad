"""Calibration windows: what a method asks for and how the windows are built.

A method states its needs as `WindowRequest`s by slot (`ids` for the `calib` group's windows,
which the baselines and OWL's outlier ratios read; any other slot is the method's own name for a
set it reads); slots asking for the same windows share one set. The same requests decide which
files are checked before the model loads, which calibration settings enter the cell's record key,
and which windows are built, so that the rule lives in one place. Windows are `[nsamples, seqlen]`
token ids drawn with the cell's seed from documents joined end to end (EOS between them), so a
window can be longer than any one document; or, for domain windows with `windows=whole_examples`,
one rendered example each (`ExampleWindows`), as a trainer over a dataset of examples sees them.
Given the cell's evaluated texts (`domain.calib.exclude_evaluated`), the domain texts are read
without the items that hold an evaluated one (core/evaluated.py) before any window is drawn."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.checks import as_float, as_int
from core.data import data_path, load_texts
from core.domain_texts import DomainTexts, domain_texts
from core.errors import ConfigError
from core.evaluated import EvaluatedTexts

SOURCES = ("general", "domain", "mixed")
CALIB_KEYS = ("source", "nsamples", "seqlen", "mix")  # the `calib` config group
WINDOWS = ("random", "whole_examples")  # how domain windows are cut from the rendered texts
PAD_ID = 0  # whole-example padding: right of every real token and outside the loss, so any id serves
COUNT_CHUNK = 8  # documents tokenized at a time while counting (stops soon after enough are seen)
OVERLAP_WARNING = 2.0  # windows per token, on average, above which most window tokens are repeats


@dataclass(frozen=True)
class WindowRequest:
    """One set of calibration windows a method reads.

    `calib_keys` names the `calib.*` settings the request was made from: they, and only they,
    enter the record key (D-Pruner's domain windows take their sizes from the pruner's own
    options, which are in the key already)."""

    source: str  # general | domain | mixed
    nsamples: int | None  # None: every example (whole_examples only)
    seqlen: int  # whole_examples: the length each example is truncated at
    mix: float = 0.5  # mixed: the fraction of domain windows
    calib_keys: tuple[str, ...] = ()
    windows: str = "random"  # random | whole_examples (domain only)
    # domain: the domain.calib sources read, each with its item limit (None: every source as configured)
    sources: tuple[tuple[str, int | None], ...] | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"calib.source={self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.windows not in WINDOWS:
            raise ConfigError(f"pruner.domain_calib.windows={self.windows!r}; "
                              f"choose one of {', '.join(WINDOWS)}")
        if self.source != "domain" and (self.windows != "random" or self.sources is not None):
            raise ConfigError(f"{self.source} calibration windows are random windows of every source; "
                              "whole_examples and a source selection apply to domain windows only")
        whole = self.windows == "whole_examples"
        if (self.nsamples is None and not whole) or (self.nsamples or 1) < 1 or self.seqlen < 2:
            raise ConfigError(f"calibration needs nsamples >= 1 (null: every example, whole_examples only) "
                              f"and seqlen >= 2, got {self.nsamples} x {self.seqlen}")
        if self.source == "mixed" and not 0.0 <= self.mix <= 1.0:
            raise ConfigError(f"calib.mix={self.mix!r} must be in [0, 1] (the fraction of domain windows)")

    @classmethod
    def from_calib(cls, calib: Mapping[str, Any]) -> WindowRequest:
        """The baselines' request: every value of the `calib` group."""
        return cls(str(calib["source"]), as_int("calib.nsamples", calib["nsamples"]),
                   as_int("calib.seqlen", calib["seqlen"]), as_float("calib.mix", calib.get("mix", 0.5)),
                   CALIB_KEYS)

    @property
    def texts(self) -> tuple[str, ...]:
        """Which text sources the windows come from."""
        return ("general", "domain") if self.source == "mixed" else (self.source,)

    def domain_calib(self, domain_calib: Mapping[str, Any]) -> Mapping[str, Any]:
        """`domain.calib` as this request reads it: only the selected sources, each with its limit."""
        if self.sources is None:
            return domain_calib
        configured = domain_calib.get("sources") or {}
        unknown = [name for name, _ in self.sources if name not in configured]
        if unknown:
            raise ConfigError(f"pruner.domain_calib.sources names {', '.join(unknown)}, not a source of "
                              f"domain.calib; choose among {', '.join(configured) or 'none'}")
        chosen = {name: {**configured[name], "limit": limit} for name, limit in self.sources}
        return {**domain_calib, "sources": chosen}


@dataclass(frozen=True)
class ExampleWindows:
    """Whole examples of unequal length: `ids` [n, longest] right-padded with PAD_ID, and each
    window's `lengths` [n]. Each batch is cut to its own longest window, with its attention mask."""

    ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def shape(self) -> torch.Size:
        """[n, longest], as a tensor of windows states its size."""
        return self.ids.shape

    def batches(self, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(ids, mask) of every `size` windows in order, padded to that batch's longest."""
        out = []
        for start in range(0, len(self), size):
            lengths = self.lengths[start : start + size]
            longest = int(lengths.max())
            mask = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
            out.append((self.ids[start : start + size, :longest], mask.long()))
        return out


class Calibration(dict[str, "torch.Tensor | ExampleWindows"]):
    """Token windows [n, seqlen] (or `ExampleWindows`) by the slot a method asked for them under
    (its requests' keys); `excluded`: per slot drawn from domain texts read without the evaluated
    ones, the items each source lost (`DomainTexts.dropped`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.excluded: dict[str, dict[str, int]] = {}

    @property
    def ids(self) -> torch.Tensor | None:
        """The `calib` group's windows (`calib=general|domain|mixed`), or None."""
        return self.get("ids")


def calibration_files(requests: Mapping[str, WindowRequest], general_spec: Mapping[str, Any],
                      domain_calib: Mapping[str, Any], root: Path, tokenizer: Any = None,
                      seed: int = 0, evaluated: EvaluatedTexts | None = None) -> list[Path]:
    """Every file the requested windows are read from, each read now with the reader the
    windows are built with (a missing, malformed or empty one raises ConfigError); given the
    model's `tokenizer`, the texts just read are also counted against the windows (`check_streams`).
    Given the `evaluated` texts, the domain texts are read without the items holding them, and
    what each read left out is said in one line."""
    wanted = {text for request in requests.values() for text in request.texts}
    files, texts = [], {}
    if "general" in wanted:
        texts["general"] = load_texts(general_spec, root, "data.general.calib")
        if not general_spec.get("hub"):
            files.append(data_path(root, general_spec["path"]))
    if "domain" in wanted and domain_calib.get("max_tokens") is not None:
        as_int("domain.calib.max_tokens", domain_calib["max_tokens"], 1)
    for request in requests.values():
        if "domain" in request.texts and ("domain", request.sources) not in texts:
            read = request.domain_calib(domain_calib)
            texts["domain", request.sources] = domain_texts(read, root, evaluated)
            if evaluated is not None:
                print(f"calibration: {excluded_line(texts['domain', request.sources])}", flush=True)
            for spec in read["sources"].values():
                files += [data_path(root, spec[key]) for key in ("path", "exclude_ids") if spec.get(key)]
    if tokenizer is not None:
        check_streams(requests, tokenizer, texts, domain_calib, seed)
    return list(dict.fromkeys(files))


def excluded_line(texts: DomainTexts) -> str:
    """What the exclusion of evaluated items left out of one read of the domain texts."""
    counts = ", ".join(f"{name} {count}" for name, count in texts.dropped.items())
    return (f"domain.calib.exclude_evaluated left out {sum(texts.dropped.values())} items that hold an "
            f"evaluated item ({counts}); {len(texts):,} remain")


def check_context(requests: Mapping[str, WindowRequest], context: int | None) -> None:
    """Calibration windows must fit the model's positions (known from its config)."""
    for slot, request in requests.items():
        if context is not None and request.seqlen > context:
            where = "calib.seqlen" if request.calib_keys else "pruner.domain_calib.seqlen"
            raise ConfigError(f"{where}={request.seqlen} ({slot} windows) exceeds the model's context "
                              f"of {context} tokens; use at most {context}")


def calibration_settings(requests: Mapping[str, WindowRequest],
                         calib: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `calib.*` values the cell depends on (None: it reads no calibration at all)."""
    keys = {key for request in requests.values() for key in request.calib_keys}
    if not keys:
        return None
    return {key: calib[key] for key in calib if key in keys}


def token_stream(tokenizer: Any, texts: list[str], max_tokens: int | None = None,
                 chunk: int = 64) -> torch.Tensor:
    """Concatenate documents (EOS between them) into one token sequence; stops early once
    `max_tokens` are collected. Documents are tokenized `chunk` at a time (a fast tokenizer
    then uses every core), which gives exactly the ids of one call per document."""
    eos = tokenizer.eos_token_id
    pieces: list[int] = []
    for start in range(0, len(texts), chunk):
        for ids in tokenizer(texts[start : start + chunk], add_special_tokens=False).input_ids:
            pieces.extend(ids)
            if eos is not None:
                pieces.append(eos)
            if max_tokens is not None and len(pieces) >= max_tokens:
                return torch.tensor(pieces, dtype=torch.long)
    return torch.tensor(pieces, dtype=torch.long)


def sample_windows(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens from a token stream, seeded."""
    if nsamples < 1 or seqlen < 2:
        raise ConfigError(f"calibration needs nsamples>=1 and seqlen>=2, got {nsamples}x{seqlen}")
    if stream.numel() <= seqlen:
        raise ConfigError(f"calibration text has {stream.numel()} tokens, fewer than seqlen={seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen, (nsamples,), generator=generator)
    return torch.stack([stream[s : s + seqlen] for s in starts.tolist()])


def domain_stream(tokenizer: Any, texts: list[str], calib_cfg: Mapping[str, Any], seqlen: int, seed: int,
                  max_tokens: int | None = None, chunk: int = 64) -> torch.Tensor:
    """The domain's rendered calibration texts, shuffled with `seed`, as one token stream;
    tokenization stops at `calib_cfg.max_tokens` (bounded cost, but at least one window), or
    sooner at `max_tokens` (a prefix of the same stream, for counting)."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    budget = calib_cfg.get("max_tokens")
    limits = [limit for limit in (None if budget is None else max(int(budget), seqlen + 1), max_tokens)
              if limit is not None]
    return token_stream(tokenizer, texts, min(limits, default=None), chunk)


def general_windows(tokenizer: Any, spec: Mapping[str, Any], root: Path,
                    nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Open-domain windows (C4 train by default)."""
    return sample_windows(token_stream(tokenizer, load_texts(spec, root)), nsamples, seqlen, seed)


def domain_windows(tokenizer: Any, calib_cfg: Mapping[str, Any], data_root: Path, nsamples: int,
                   seqlen: int, seed: int, texts: list[str] | None = None) -> torch.Tensor:
    """Windows from the domain's rendered calibration texts (`domain_stream`); `texts`: those
    texts as already read (default: every one, read now)."""
    texts = domain_texts(calib_cfg, data_root) if texts is None else texts
    stream = domain_stream(tokenizer, texts, calib_cfg, seqlen, seed)
    return sample_windows(stream, nsamples, seqlen, seed)


def example_windows(tokenizer: Any, texts: list[str], nsamples: int | None, seqlen: int,
                    seed: int) -> ExampleWindows:
    """One window per rendered example, in the seeded shuffled order (`domain_stream`'s), each
    the example's tokens as the tokenizer encodes one text, truncated at `seqlen`; the first
    `nsamples` of them (None: every example, one pass over the sources)."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    texts = texts[:nsamples]
    rows = [ids[:seqlen] for ids in tokenizer(texts).input_ids]
    lengths = torch.tensor([len(ids) for ids in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
    for row, tokens in zip(ids, rows, strict=True):
        row[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return ExampleWindows(ids, lengths)


def check_streams(requests: Mapping[str, WindowRequest], tokenizer: Any, texts: Mapping[Any, list[str]],
                  domain_calib: Mapping[str, Any], seed: int) -> None:
    """Before the model loads: each text the windows are drawn from (`texts`: "general", and
    ("domain", the request's source selection)) must hold more than one window (else sampling
    fails), and windows that would mostly repeat the same tokens (each token in more than
    OVERLAP_WARNING windows on average) get one `warning:` line. Only as many tokens are counted
    as these two questions need, with the streams the windows are built from, a few documents at
    a time. Whole-example windows need only enough examples."""
    seen = set()
    for request in requests.values():
        if request.windows == "whole_examples":
            _check_examples(request, len(texts["domain", request.sources]))
            continue
        k = round(request.nsamples * request.mix) if request.source == "mixed" else request.nsamples
        for text in request.texts:
            used = request.nsamples - k if text == "general" and request.source == "mixed" else k
            if (text, used, request.seqlen) in seen:
                continue
            seen.add((text, used, request.seqlen))
            need = max(request.seqlen + 1, math.ceil(used * request.seqlen / OVERLAP_WARNING) + 1)
            if text == "general":
                where, stream = "data.general.calib", token_stream(tokenizer, texts[text], need, COUNT_CHUNK)
            else:
                budget = domain_calib.get("max_tokens")
                where = "domain.calib" + ("" if budget is None else f", max_tokens={budget}")
                stream = domain_stream(tokenizer, texts[text, request.sources], domain_calib, request.seqlen,
                                       seed, need, COUNT_CHUNK)
            _check_stream(where, request, used, stream.numel())


def _check_examples(request: WindowRequest, examples: int) -> None:
    if request.nsamples is not None and request.nsamples > examples:
        raise ConfigError(f"pruner.domain_calib.nsamples={request.nsamples} whole examples, but the "
                          f"selected domain.calib sources hold {examples:,}; use at most {examples} "
                          "(null: all of them)")


def _check_stream(where: str, request: WindowRequest, used: int, tokens: int) -> None:
    """`tokens`: the stream's length, or a count past what the warning needs (then it stays quiet)."""
    setting = "calib.seqlen" if request.calib_keys else "pruner.domain_calib.seqlen"
    if tokens <= request.seqlen:
        raise ConfigError(f"{where}: the calibration text is {tokens:,} tokens long, too short for one "
                          f"window of {setting}={request.seqlen} (sampling needs more than "
                          f"{request.seqlen:,}); give a longer text or a smaller {setting}")
    coverage = used * request.seqlen / tokens
    if coverage > OVERLAP_WARNING:
        print(f"warning: calibration: {used} windows x {request.seqlen} tokens drawn from a stream of "
              f"{tokens:,} tokens ({where}): each token appears in ~{coverage:.1f} windows on average; "
              "most windows repeat the same text")


def mixed_windows(general: torch.Tensor, domain: torch.Tensor, mix: float) -> torch.Tensor:
    """As many windows as `general`: the first round(n * mix) domain windows, then general ones."""
    if not 0.0 <= float(mix) <= 1.0:
        raise ConfigError(f"calib.mix={mix!r} must be in [0, 1] (the fraction of domain windows)")
    n = general.shape[0]
    k = round(n * float(mix))
    if domain.shape[0] < k or (k and domain.shape[1] != general.shape[1]):
        raise ConfigError(f"mixed calibration needs {k} domain windows of {general.shape[1]} tokens, "
                          f"got {tuple(domain.shape)}")
    return torch.cat([domain[:k], general[: n - k]])


def build_calibration(requests: Mapping[str, WindowRequest], tokenizer: Any,
                      general_spec: Mapping[str, Any], domain_calib: Mapping[str, Any], root: Path,
                      seed: int, evaluated: EvaluatedTexts | None = None) -> Calibration:
    """The windows of every request, each drawn with `seed`; domain windows from the texts read
    without the items holding an `evaluated` text, when given."""
    calibration = Calibration()
    built: dict[tuple, torch.Tensor | ExampleWindows] = {}  # slots asking for the same windows share them
    dropped: dict[tuple, dict[str, int]] = {}  # what the domain texts of each shared set lost
    for slot, request in requests.items():
        mix = request.mix if request.source == "mixed" else None
        same = (request.source, request.nsamples, request.seqlen, mix, request.windows, request.sources)
        if same not in built:
            n, seqlen = request.nsamples, request.seqlen
            general = domain = None
            if "general" in request.texts:
                general = general_windows(tokenizer, general_spec, root, n, seqlen, seed)
            if "domain" in request.texts:
                read = request.domain_calib(domain_calib)
                texts = domain_texts(read, root, evaluated)
                if evaluated is not None:
                    dropped[same] = texts.dropped
                whole = request.windows == "whole_examples"
                domain = (example_windows(tokenizer, texts, n, seqlen, seed) if whole
                          else domain_windows(tokenizer, read, root, n, seqlen, seed, texts))
            windows = mixed_windows(general, domain, request.mix) if request.source == "mixed" else general
            built[same] = domain if request.source == "domain" else windows
        calibration[slot] = built[same]
        if same in dropped:
            calibration.excluded[slot] = dropped[same]
    return calibration


def calibration_budget(requests: Mapping[str, WindowRequest],
                       calibration: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """What the calibration consumed: per slot its windows (`source`, `windows`, `seqlen`,
    `domain_windows`: mixed windows open with round(n * mix) domain ones, as `mixed_windows`
    builds them), and the distinct tokens per source, each window set counted once however many
    slots share it; whole-example windows count their real tokens, no padding (`seqlen`: the
    longest); `excluded`, where the domain texts were read without the evaluated ones, the items
    each source lost (`Calibration.excluded`). From the drawn windows when given; without them
    (records written before budgets were recorded) from the sets `build_calibration` would draw
    for `requests`."""
    tokens = {"general": 0, "domain": 0}
    windows, counted = {}, set()
    excluded = getattr(calibration, "excluded", {})
    for slot, request in requests.items():
        if calibration is None:  # the window sets build_calibration shares between slots
            n, seqlen = request.nsamples, request.seqlen
            shared = (request.source, n, seqlen, request.mix if request.source == "mixed" else None)
        else:
            drawn = calibration[slot]
            shared, (n, seqlen) = id(drawn), drawn.shape
        k = {"general": 0, "domain": n, "mixed": round(n * request.mix)}[request.source]
        windows[slot] = {"source": request.source, "windows": int(n), "seqlen": int(seqlen),
                         "domain_windows": int(k)}
        if slot in excluded:
            windows[slot]["excluded"] = dict(excluded[slot])
        if shared not in counted:
            counted.add(shared)
            if isinstance(drawn := (calibration or {}).get(slot), ExampleWindows):  # real tokens, no padding
                tokens[request.source] += int(drawn.lengths.sum())
                continue
            tokens["domain"] += int(k * seqlen)
            tokens["general"] += int((n - k) * seqlen)
    return {"tokens": tokens, "windows": windows}
