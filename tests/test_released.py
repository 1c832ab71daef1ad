"""The released D-Pruner recipe (`+dpruner_variant=released`): its hyper-parameters, whole-example
domain windows (one rendered example each, padding outside the loss), and the default random
windows left as they were."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from bench.defaults import compose_config
from bench.results.records import cell_config, record_key
from core.calibration import (
    PAD_ID,
    ExampleWindows,
    WindowRequest,
    build_calibration,
    calibration_files,
    domain_windows,
    example_windows,
)
from core.data import resolve_data_root
from core.distributed import World
from core.domain_texts import domain_texts
from core.errors import ConfigError
from core.models import load_model
from core.paths import CONF_DIR
from core.structure import model_linears
from pruners.dpruner import DPruner
from pruners.dpruner.domain import domain_importance
from pruners.dpruner.lm_loss import NextTokenLoss
from pruners.dpruner.options import DPrunerOptions

CPU = torch.device("cpu")
ROOT = resolve_data_root(None)
CALIB = {"source": "general", "nsamples": 4, "seqlen": 32, "mix": 0.5}


def composed(*overrides: str):
    return compose_config(["pruner=dpruner", *overrides])


@pytest.fixture(scope="module")
def tiny():
    """The tiny random LLaMA with the default model's tokenizer."""
    return load_model(OmegaConf.load(CONF_DIR / "model/tiny-llama.yaml"))


@pytest.fixture(scope="module")
def legal_calib():
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "domain/legal.yaml").calib, resolve=True)


def test_released_variant_resolves_to_the_released_hyper_parameters():
    pruner = OmegaConf.to_container(composed("+dpruner_variant=released").pruner, resolve=True)
    assert (pruner["batch_size"], pruner["lr"], pruner["epochs"]) == (8, 0.03, 5)
    assert (pruner["warmup_ratio"], pruner["max_grad_norm"], pruner["clip"]) == (0.1, 1.0, "two_pass")
    assert pruner["domain_calib"] == {"nsamples": None, "seqlen": 1024, "windows": "whole_examples",
                                      "sources": {"casehold": 500, "billsum": 500}}
    default = OmegaConf.to_container(composed().pruner, resolve=True)
    changed = {key for key in default if default[key] != pruner[key]}
    assert changed == {"batch_size", "epochs", "clip", "domain_calib"}  # lr, warm-up, clip 1.0: as default
    method = DPruner(**{k: v for k, v in pruner.items() if k != "_target_"})
    request = method.calibration_requests(CALIB)["domain"]
    assert (request.windows, request.nsamples, request.seqlen) == ("whole_examples", None, 1024)
    assert request.sources == (("casehold", 500), ("billsum", 500))
    assert method.options.steps(700) == 88 * 5


def test_default_domain_windows_are_random_windows_of_every_source(legal_calib, tiny):
    options = DPrunerOptions()
    assert options.domain_calib == {"nsamples": 32, "seqlen": 256, "windows": "random", "sources": None}
    request = DPruner(**{"driver": {"progress": False}}).calibration_requests(CALIB)["domain"]
    assert (request.windows, request.sources) == ("random", None)
    calib = {**legal_calib, "max_tokens": 5_000}
    small = WindowRequest("domain", 4, 48)
    built = build_calibration({"domain": small}, tiny[1], {}, calib, ROOT, seed=3)["domain"]
    assert torch.equal(built, domain_windows(tiny[1], calib, ROOT, 4, 48, 3))


def test_new_settings_at_their_defaults_keep_record_keys():
    """A D-Pruner cell's key is the same with or without the later domain_calib settings at their
    defaults, and differs when they are set."""
    plain = OmegaConf.to_container(composed().pruner, resolve=True)
    older = copy.deepcopy(plain)
    older["domain_calib"] = {"nsamples": 32, "seqlen": 256}

    def key(pruner: dict) -> str:
        config = {"pruner": pruner, "sparsity": 0.5, "pattern": "unstructured"}
        return record_key(cell_config(config, dense=False, sparsity=0.5, pattern="unstructured", calib=None))

    assert key(plain) == key(older)
    whole = copy.deepcopy(plain)
    whole["domain_calib"]["windows"] = "whole_examples"
    assert key(whole) != key(plain)


def test_each_whole_example_window_is_one_rendered_example(tiny, legal_calib):
    tokenizer = tiny[1]
    request = WindowRequest("domain", 6, 40, windows="whole_examples", sources=(("casehold", 12),))
    windows = build_calibration({"domain": request}, tokenizer, {}, legal_calib, ROOT, seed=5)["domain"]
    assert isinstance(windows, ExampleWindows) and len(windows) == 6
    texts = domain_texts({"sources": {"casehold": {**legal_calib["sources"]["casehold"], "limit": 12}}}, ROOT)
    encoded = {tuple(tokenizer(text).input_ids[:40]) for text in texts}
    pairs = list(zip(windows.ids, windows.lengths.tolist(), strict=True))
    rows = [tuple(row[:length].tolist()) for row, length in pairs]
    assert set(rows) <= encoded and len(set(rows)) == 6
    assert all(row[length:].eq(PAD_ID).all() for row, length in pairs)
    every = example_windows(tokenizer, texts, None, 4096, seed=5)  # null: every example, untruncated
    assert len(every) == 12
    assert sorted(every.lengths.tolist()) == sorted(len(tokenizer(text).input_ids) for text in texts)
    assert windows.lengths.max() == 40  # CaseHOLD examples are longer than 40 tokens: truncated


def test_a_padded_batch_scores_only_real_tokens(tiny):
    """The loss and gradient of a right-padded batch equal those of its examples run one by one,
    weighted by their next-token counts (the mean over every real next token), chunked or not;
    and what is written in the padding changes nothing."""
    model = copy.deepcopy(tiny[0])
    lengths = torch.tensor([9, 17, 4])
    torch.manual_seed(0)
    ids = torch.randint(1, 1000, (3, 17))
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model_linears(model)["layers.0.mlp.up_proj"].weight.requires_grad_(True)

    def run(loss: NextTokenLoss, batch: torch.Tensor, mask: torch.Tensor | None):
        value = loss.backward(batch, mask)
        grad, weight.grad = weight.grad, None
        return value, grad

    for chunk in (None, 5):
        loss = NextTokenLoss(model, chunk, ids[:1, :8])
        assert loss.chunked == (chunk is not None)
        padded = ExampleWindows(ids.masked_fill(torch.arange(17) >= lengths.unsqueeze(1), PAD_ID), lengths)
        (batch, mask), = padded.batches(3)
        value, grad = run(loss, batch, mask)
        alone = [run(loss, ids[i : i + 1, :n], None) for i, n in enumerate(lengths.tolist())]
        counts = (lengths - 1).double()
        weights = counts / counts.sum()
        weighted = list(zip(weights.tolist(), alone, strict=True))
        assert value == pytest.approx(sum(w * v for w, (v, _) in weighted), rel=1e-5)
        torch.testing.assert_close(grad, sum(w * g for w, (_, g) in weighted), rtol=1e-4, atol=1e-7)
        other_padding = batch.masked_fill(mask == 0, 77)
        torch.testing.assert_close(run(loss, other_padding, mask)[1], grad, rtol=1e-5, atol=1e-8)


def test_whole_example_batches_are_cut_to_their_longest():
    windows = ExampleWindows(torch.zeros(5, 30, dtype=torch.long), torch.tensor([3, 30, 7, 5, 2]))
    shapes = [(tuple(ids.shape), mask.sum(1).tolist()) for ids, mask in windows.batches(2)]
    assert shapes == [((2, 30), [3, 30]), ((2, 7), [7, 5]), ((1, 2), [2])]


def test_domain_pass_over_whole_examples(tiny, legal_calib):
    """The frozen pass over whole examples takes one backward per batch and scores every matrix."""
    tokenizer = tiny[1]
    request = WindowRequest("domain", 5, 64, windows="whole_examples", sources=(("casehold", 8),))
    windows = build_calibration({"domain": request}, tokenizer, {}, legal_calib, ROOT, seed=0)["domain"]
    options = DPrunerOptions(importance="domain_only", update_weights=False, batch_size=2)
    model = copy.deepcopy(tiny[0])
    scores, notes = domain_importance(model, windows, {}, None, options, CPU, CPU, progress=False)
    assert set(scores) == set(model_linears(tiny[0]))
    assert all(s.gt(0).any() for s in scores.values())
    assert all(n["grad_abs_mean"] > 0 for n in notes.values())


def test_bad_whole_example_settings_fail_with_one_clear_line(legal_calib, tiny):
    with pytest.raises(ConfigError, match="nsamples=None"):
        DPrunerOptions(domain_calib={"nsamples": None})
    with pytest.raises(ConfigError, match="pruner.domain_calib.windows='whole'"):
        DPrunerOptions(domain_calib={"windows": "whole"})
    with pytest.raises(ConfigError, match="pruner.domain_calib.sources"):
        DPrunerOptions(domain_calib={"sources": ["casehold"]})
    released = DPruner(domain_calib={"windows": "whole_examples", "nsamples": None})
    with pytest.raises(ConfigError, match="one process only"):
        released.check_world(World(rank=0, size=2))
    def request(nsamples: int, sources: tuple) -> dict[str, WindowRequest]:
        return {"domain": WindowRequest("domain", nsamples, 64, windows="whole_examples", sources=sources)}

    with pytest.raises(ConfigError, match="pubmedqa, not a source of domain.calib; choose among casehold"):
        calibration_files(request(4, (("pubmedqa", None),)), {}, legal_calib, ROOT)
    with pytest.raises(ConfigError, match="nsamples=11 whole examples.*hold 10"):
        calibration_files(request(11, (("casehold", 10),)), {}, legal_calib, ROOT, tiny[1])
