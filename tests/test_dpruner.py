"""D-Pruner: its formulas against independent computations, its masks, and the state it leaves."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

import pruners.dpruner.general as general_pass
from core.calibration import Calibration, domain_windows, general_windows
from core.data import resolve_data_root
from core.errors import ConfigError
from core.models import load_model
from core.paths import CONF_DIR
from core.structure import decoder_layers, model_linears, sparsity_summary
from pruners import DriverSettings, from_config
from pruners.dpruner import DPruner
from pruners.dpruner.domain import domain_importance
from pruners.dpruner.formulas import exact_regularizer_grads, fisher_regularizer_grad, taylor_importance
from pruners.dpruner.general import compute_general_importance, general_cache_key
from pruners.dpruner.options import DPrunerOptions
from pruners.dpruner.tensorfile import TensorFile
from pruners.masks import select_mask

CPU = torch.device("cpu")
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def tiny():
    """The tiny random LLaMA with the real tokenizer, and its calibration windows."""
    model, tokenizer = load_model(OmegaConf.load(CONF_DIR / "model/tiny-llama.yaml"))
    root = resolve_data_root(None)
    general_spec = OmegaConf.load(CONF_DIR / "config.yaml").data.general.calib
    windows = {"general": general_windows(tokenizer, general_spec, root, 8, 48, 0)}
    for domain in ("legal", "healthcare"):
        calib = OmegaConf.load(CONF_DIR / f"domain/{domain}.yaml").calib
        calib.max_tokens = 20_000
        windows[domain] = domain_windows(tokenizer, calib, root, 8, 48, 0)
    return model, windows


def fresh(tiny) -> nn.Module:
    return copy.deepcopy(tiny[0])


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: linear.weight != 0 for name, linear in model_linears(model).items()}


def prune(tiny, domain: str = "legal", **options) -> tuple[nn.Module, list]:
    model = fresh(tiny)
    options = {"driver": QUIET, **options}
    calibration = Calibration(general=tiny[1]["general"], domain=tiny[1][domain])
    return model, DPruner(**options).prune(model, calibration, CPU)


def general_importance(model: nn.Module, ids: torch.Tensor, **options) -> dict[str, torch.Tensor]:
    G, _ = compute_general_importance(model, ids, DPrunerOptions(**options), DriverSettings(progress=False),
                                      CPU, CPU)
    return G


def achieved(model: nn.Module) -> dict[str, float]:
    return sparsity_summary(model)["per_matrix"]


def layer_inputs(model: nn.Module, ids: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Inputs of one linear from a plain dense forward (independent of the driver)."""
    rows = []

    def keep(module: nn.Module, args: tuple) -> None:
        rows.append(args[0].reshape(-1, args[0].shape[-1]))

    handle = module.register_forward_pre_hook(keep)
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return torch.cat(rows).double()


def test_general_importance_equals_explicit_inverse(tiny):
    model = fresh(tiny)
    ids = tiny[1]["general"]
    G = general_importance(model, ids)
    for name in ("layers.0.self_attn.q_proj", "layers.1.mlp.down_proj"):
        linear = model_linears(model)[name]
        x = layer_inputs(model, ids, linear)
        H = 2 * x.t() @ x / x.shape[0]
        H += 0.01 * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
        expected = linear.weight.double().pow(2) / torch.diagonal(torch.linalg.inv(H)).unsqueeze(0)
        torch.testing.assert_close(G[name].double(), expected, rtol=2e-4, atol=0)


def test_refined_gradient_and_importance_equal_the_formula(tiny):
    """Through the hooks (checkpointing on, two batches) vs plain autograd and the formula."""
    model = fresh(tiny)
    ids = tiny[1]["legal"]
    options = DPrunerOptions(lambda_=1e12, update_weights=False, batch_size=4)
    G = general_importance(model, tiny[1]["general"])
    scores, notes = domain_importance(model, ids, G, None, options, CPU, CPU, progress=False)
    linears = model_linears(model)
    expected = {name: torch.zeros_like(G[name]) for name in linears}
    ratio = {name: [0.0, 0.0] for name in linears}
    for batch in (ids[:4], ids[4:]):
        loss = model(input_ids=batch, labels=batch).loss
        grads = torch.autograd.grad(loss, [m.weight for m in linears.values()])
        for (name, linear), g in zip(linears.items(), grads, strict=True):
            reg = 2 * 1e12 * 3e-2**2 * G[name] * g.pow(3)
            gw = (g + reg) * linear.weight.detach()
            expected[name] += (-gw + 0.5 * gw.pow(2)).abs()
            ratio[name][0] += float(reg.abs().mean())
            ratio[name][1] += float(g.abs().mean())
    for name in linears:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-4, atol=1e-12)
        assert notes[name]["reg_ratio"] == pytest.approx(ratio[name][0] / ratio[name][1], rel=1e-4)
    assert max(n["reg_ratio"] for n in notes.values()) > 1e-3  # the test exercises the term
    assert all(m.weight.grad is None for m in linears.values())


def test_formula_helpers():
    g, G, w = torch.tensor([0.1, -0.2]), torch.tensor([2.0, 3.0]), torch.tensor([1.0, -1.0])
    assert torch.allclose(fisher_regularizer_grad(g, G, 0.5, 0.1), 2 * 0.5 * 0.01 * G * g**3)
    gw = g * w
    assert torch.allclose(taylor_importance(g, w), (-gw + 0.5 * gw**2).abs())


def test_exact_regularizer_gradient_matches_finite_differences():
    """grad of R(w) = lambda alpha^2 sum G g(w)^2 by double backward vs central differences."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(11, 5, dtype=torch.float64), torch.randn(11, 3, dtype=torch.float64)
    params = [net[0].weight, net[2].weight]
    Gs = [torch.rand_like(p) for p in params]
    lam, alpha = 0.7, 0.3

    def regularizer() -> torch.Tensor:
        grads = torch.autograd.grad(nn.functional.mse_loss(net(x), y), params, create_graph=True)
        return lam * alpha**2 * sum((G * g.pow(2)).sum() for G, g in zip(Gs, grads, strict=True))

    grads = torch.autograd.grad(nn.functional.mse_loss(net(x), y), params, create_graph=True)
    exact = exact_regularizer_grads(grads, params, Gs, lam, alpha)
    directions = [torch.randn_like(p) for p in params]
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, directions, strict=True):
            p.add_(eps * d)
    upper = float(regularizer().detach())
    with torch.no_grad():
        for p, d in zip(params, directions, strict=True):
            p.sub_(2 * eps * d)
    lower = float(regularizer().detach())
    numeric = (upper - lower) / (2 * eps)
    analytic = sum(float((e * d).sum()) for e, d in zip(exact, directions, strict=True))
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_trajectory_moves_the_weights_within_the_clip(tiny):
    """SGD steps w <- w - lr * clip * g' happen while scoring (two_pass: this step's own norm)."""
    model = fresh(tiny)
    dense = {n: m.weight.detach().clone() for n, m in model_linears(model).items()}
    options = DPrunerOptions(lambda_=0.0, lr=0.5, warmup_ratio=0.0, clip="two_pass", max_grad_norm=1e-3)
    domain_importance(model, tiny[1]["legal"], {}, dense, options, CPU, CPU, progress=False)
    linears = model_linears(model).items()
    moved = sum(float((m.weight.detach() - dense[n]).pow(2).sum()) for n, m in linears) ** 0.5
    assert 0 < moved <= (0.5 + 0.25) * 1e-3 * (1 + 1e-4)  # lr 0.5 then 0.25 (linear decay), each clipped


def test_exact_mode_runs_and_restores_attention(tiny):
    model, reports = prune(tiny, regularizer_grad="exact", lambda_=1e6)
    assert model.config._attn_implementation == tiny[0].config._attn_implementation
    assert all(r.notes["reg_ratio"] > 0 for r in reports)


def test_lambda_zero_equals_domain_only(tiny):
    a, _ = prune(tiny, lambda_=0.0)
    b, _ = prune(tiny, importance="domain_only", lambda_=1e12)
    for name, mask in masks_of(a).items():
        assert torch.equal(mask, masks_of(b)[name]), name


def test_general_only_ranks_G_alone(tiny):
    model = fresh(tiny)
    G = general_importance(model, tiny[1]["general"])
    pruned, _ = prune(tiny, importance="general_only")
    for name, mask in masks_of(pruned).items():
        assert torch.equal(mask, select_mask(G[name], 0.5)), name


def test_masks_differ_between_domains_and_with_lambda(tiny):
    legal, healthcare = masks_of(prune(tiny, "legal")[0]), masks_of(prune(tiny, "healthcare")[0])
    assert any(not torch.equal(legal[n], healthcare[n]) for n in legal)
    strong = masks_of(prune(tiny, "legal", lambda_=1e12)[0])
    assert any(not torch.equal(legal[n], strong[n]) for n in legal)


@pytest.mark.parametrize("options, group", [
    ({}, "matrix"),
    ({"blocking": True, "block_size": 32}, "block"),
    ({"pattern": "2:4"}, "nm"),
    ({"sparsity": 0.7, "regularizer": "anchor", "lambda_": 1.0, "clip": "two_pass"}, "matrix"),
])
def test_sparsity_exact_and_kept_weights_are_the_dense_ones(tiny, options, group):
    model, reports = prune(tiny, **options)
    sparsity = options.get("sparsity", 0.5)
    dense = model_linears(tiny[0])
    for name, linear in model_linears(model).items():
        w, w0 = linear.weight.detach(), dense[name].weight.detach()
        kept = w != 0
        assert torch.equal(w[kept], w0[kept])  # bit for bit, the trajectory is discarded
        if group == "matrix":
            assert int((~kept).sum()) == round(sparsity * w.numel())
        elif group == "block":
            for start in range(0, w.shape[1], 32):
                block = kept[:, start : start + 32]
                assert int((~block).sum()) == round(sparsity * block.numel())
        else:
            assert torch.all(kept.reshape(w.shape[0], -1, 4).sum(-1) == 2)
    sizes = {r.name: r.shape[0] * r.shape[1] for r in reports}
    assert all(abs(s - sparsity) <= 1 / sizes[name] for name, s in achieved(model).items())


def test_leaves_no_grad_hooks_or_training_state(tiny):
    model = fresh(tiny)
    model.model.embed_tokens.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    DPruner(driver=QUIET, lambda_=1e9).prune(
        model, Calibration(general=tiny[1]["general"], domain=tiny[1]["legal"]), CPU)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    assert not model.training and not any(m.training for m in model.modules())
    assert not model.is_activation_checkpointing
    assert not hasattr(model, "_require_grads_hook")
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())
    loss = model(input_ids=tiny[1]["legal"][:2], labels=tiny[1]["legal"][:2]).loss
    loss.backward()  # the pruned model trains normally afterwards, hooks gone
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def refuse_to_compute(*args, **kwargs):
    raise AssertionError("G was computed, not read from the cache")


def test_general_importance_is_cached(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = fresh(tiny)
    first = general_importance(model, tiny[1]["general"], cache_dir=str(tmp_path))
    files = list(tmp_path.glob("general_*.bin"))
    assert len(files) == 1
    monkeypatch.setattr(general_pass, "run_layerwise", refuse_to_compute)  # a second pass would fail
    second = general_importance(model, tiny[1]["general"], cache_dir=str(tmp_path))
    assert all(torch.equal(first[n], second[n]) for n in first)
    with pytest.raises(AssertionError, match="not read from the cache"):  # the poison is live
        general_importance(model, tiny[1]["general"][:4], cache_dir=str(tmp_path))
    other = general_cache_key(model, tiny[1]["general"][:4], 0.01)
    assert other != general_cache_key(model, tiny[1]["general"], 0.01)
    assert general_cache_key(fresh(tiny), tiny[1]["general"], 0.01) == files[0].stem.split("_")[1]


@pytest.mark.parametrize("options", [{"lambda_": 1e12}, {"regularizer": "anchor", "lambda_": 10.0}])
def test_disk_scratch_gives_the_same_masks(tiny, tmp_path: Path, options, monkeypatch: pytest.MonkeyPatch):
    """G and the dense copy in scratch files, read matrix by matrix from disk: the same masks."""
    memory = masks_of(prune(tiny, scratch="memory", **options)[0])
    reads: list[str] = []
    read = TensorFile.__getitem__

    def counted(self: TensorFile, name: str) -> torch.Tensor:
        reads.append(self.path.name)
        return read(self, name)

    monkeypatch.setattr(TensorFile, "__getitem__", counted)
    for _ in range(2):  # computes G into the cache, then reads it from there
        disk = masks_of(prune(tiny, scratch="disk", scratch_dir=str(tmp_path), cache_dir=str(tmp_path / "c"),
                              **options)[0])
        assert all(torch.equal(memory[n], disk[n]) for n in memory)
    assert any(name.startswith("general_") for name in reads)  # G came from its file
    assert "dense.bin" in reads  # the restored (kept) weights came from the dense file
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # scratch files are gone


def test_tensorfile_roundtrip(tmp_path: Path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(4, 2).to(torch.bfloat16), "c": torch.arange(6.0)}
    with TensorFile.writing(tmp_path / "t.bin") as store:
        for name, tensor in tensors.items():
            store.put(name, tensor)
        store.notes = {"note": 1}
    with pytest.raises(RuntimeError), TensorFile.writing(tmp_path / "killed.bin") as store:
        store.put("a", tensors["a"])
        raise RuntimeError("the writer dies half way")
    assert TensorFile.open(tmp_path / "missing.bin") is None
    again = TensorFile.open(tmp_path / "t.bin")
    assert again.notes == {"note": 1} and list(again) == list(tensors)
    assert all(torch.equal(again[n], t) and again[n].dtype == t.dtype for n, t in tensors.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin", "t.bin.json"]


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text", "opt"])
def test_other_architectures(make_tiny, calib_ids, family):
    model = make_tiny(family)
    reports = DPruner(driver=QUIET, lambda_=1e9).prune(
        model, Calibration(general=calib_ids, domain=calib_ids.flip(0)), CPU)
    assert len(reports) == len(model_linears(model)) > 0
    assert all(s == pytest.approx(0.5, abs=1e-3) for s in achieved(model).values())
    assert all(p.grad is None for p in model.parameters())
    assert not any(layer.training for layer in decoder_layers(model))


@pytest.mark.parametrize("options", [
    {"importance": "both"}, {"regularizer_grad": "hessian"}, {"lambda_": -1}, {"lr": 0},
    {"epochs": 0}, {"warmup_ratio": 1.0}, {"max_grad_norm": 0}, {"clip": "global"}, {"scratch": "none"},
    {"lr": "abc"}, {"batch_size": 1.5}, {"domain_calib": {"nsamples": 0}}, {"unknown_option": 1},
])
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        from_config({"_target_": "pruners.dpruner.DPruner", **options})


def test_missing_windows_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="domain"):
        DPruner(driver=QUIET, lambda_=0).prune(fresh(tiny), Calibration(general=tiny[1]["general"]), CPU)


def test_hydra_configs_compose():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=["model=tiny-llama"])  # D-Pruner is the default cell
        plain = OmegaConf.to_container(cfg, resolve=True)
        pruner = from_config(plain["pruner"], sparsity=plain["sparsity"], pattern=plain["pattern"],
                             driver=plain["driver"])
        assert isinstance(pruner, DPruner) and pruner.options.lambda_ == cfg.pruner.lambda_
        assert pruner.options.cache_dir is not None
        requests = pruner.calibration_requests(cfg.calib)
        assert requests["domain"].nsamples == cfg.pruner.domain_calib.nsamples
        assert requests["general"].nsamples == cfg.calib.nsamples
        sweep = compose("config", overrides=["+experiment=dpruner_ablation"], return_hydra_config=True)
        assert sweep.pruner._target_ == "pruners.dpruner.DPruner"
        assert sweep.hydra.sweeper.params
