"""Caches that verify themselves (D-Pruner's general importance, the converted model): a damaged
entry is discarded with one warning and recomputed. Stale temporaries of killed writers are
removed, live ones kept. The model's context is known before its weights load. Every cache here
lives in the test's temporary folder: HOME and DPB_CACHE_DIR point there, so no test reads or
writes a developer's ~/.cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig

import core.gguf_wheels as gguf_wheels
import pruners.dpruner.general as general_pass
from core.errors import ConfigError
from core.files import PARTIAL, Damaged, _host, atomic_dir, atomic_open, remove_stale_partials, scratch_folder
from core.gguf_wheels import verify_manifest, write_manifest
from core.models import check_model, load_model, load_tokenizer, model_context, prepare_model_files
from core.paths import CONF_DIR
from pruners import DriverSettings
from pruners.dpruner.options import DPrunerOptions

CPU = torch.device("cpu")
WARNING = re.compile(r"warning: (?P<what>.+) (?P<path>\S+) is damaged \((?P<why>.+)\); "
                     r"discarded, recomputing")
HOST = _host()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def warnings_in(out: str) -> list[re.Match]:
    lines = [line for line in out.splitlines() if line.startswith("warning:")]
    matches = [WARNING.fullmatch(line) for line in lines]
    assert all(matches), lines
    return matches


@pytest.fixture(autouse=True)
def no_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DPB_CACHE_DIR", str(tmp_path / "dpb-cache"))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


# ---------------------------------------------------------------- D-Pruner's general-importance cache

@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Labels of the layer-by-layer passes that ran: G was computed, not read from the cache."""
    ran: list[str] = []
    real = general_pass.run_layerwise

    def counted(*args, **kwargs):
        ran.append(kwargs["label"])
        return real(*args, **kwargs)

    monkeypatch.setattr(general_pass, "run_layerwise", counted)
    return ran


def general(model: torch.nn.Module, ids: torch.Tensor, cache: Path) -> dict[str, torch.Tensor]:
    G, _ = general_pass.compute_general_importance(model, ids, DPrunerOptions(cache_dir=str(cache)),
                                                   DriverSettings(progress=False), CPU, CPU)
    return G


def edit_index(path: Path, change) -> None:
    meta = Path(f"{path}.json")
    payload = json.loads(meta.read_text())
    change(payload)
    meta.write_text(json.dumps(payload))


def shift_first_offset(payload: dict) -> None:
    first = next(iter(payload["index"].values()))
    first["offset"] += 4


def drop_checksums(payload: dict) -> None:
    del payload["sha256"], payload["index_sha256"]


DAMAGE = {
    "truncated": lambda path: os.truncate(path, path.stat().st_size - 4),
    "flipped byte": lambda path: flip_byte(path, path.stat().st_size // 2),
    "unparseable index": lambda path: Path(f"{path}.json").write_text('{"index": {"model.layers'),
    "edited index": lambda path: edit_index(path, shift_first_offset),
    "no checksum (earlier version)": lambda path: edit_index(path, drop_checksums),
    "bytes missing": lambda path: path.unlink(),
    "index missing": lambda path: Path(f"{path}.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_general_cache_warns_and_recomputes(make_tiny, calib_ids, tmp_path: Path, capsys,
                                                    passes: list[str], damage: str):
    model = make_tiny("llama")
    clean = general(model, calib_ids, tmp_path)
    [path] = tmp_path.glob("general_*.bin")
    assert general(model, calib_ids, tmp_path).keys() == clean.keys() and len(passes) == 1  # cached
    capsys.readouterr()

    DAMAGE[damage](path)
    again = general(model, calib_ids, tmp_path)
    [warning] = warnings_in(capsys.readouterr().out)
    assert warning["what"] == "D-Pruner general-importance cache" and warning["path"] == str(path)
    assert len(passes) == 2  # recomputed, not read
    assert all(torch.equal(again[name], clean[name]) for name in clean)

    healed = general(model, calib_ids, tmp_path)  # the rewritten entry verifies: read, silently
    assert len(passes) == 2 and not capsys.readouterr().out
    assert all(torch.equal(healed[name], clean[name]) for name in clean)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.json"]


def test_stale_partial_in_cache_dir_removed_when_G_cache_is_used(make_tiny, calib_ids, tmp_path: Path,
                                                                  capsys):
    stale = tmp_path / f".general_0123.bin.{HOST}-{dead_pid()}.abcd1234.tmp"
    stale.write_bytes(b"\0" * 3000)
    general(make_tiny("llama"), calib_ids, tmp_path)
    assert not stale.exists()
    assert f"removed stale partial file {stale} (3.0 kB) left by a killed run" in capsys.readouterr().out


# ---------------------------------------------------------------- stale partial files

def test_remove_stale_partials_only_removes_dead_writers_of_this_host(tmp_path: Path, capsys):
    dead = dead_pid()
    stale_file = tmp_path / f".general_x.bin.{HOST}-{dead}.abcd1234.tmp"
    stale_file.write_bytes(b"\0" * 2000)
    stale_dir = tmp_path / f".smollm2-135m.{HOST}-{dead}.k2j3h4g5.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"\0" * 5_000_000)
    kept = [
        tmp_path / f".record.json.{HOST}-{os.getpid()}.q1w2e3r4.tmp",  # a live writer (this one)
        tmp_path / f".record.json.other-host-{dead}.q1w2e3r4.tmp",  # another host's: its pid says nothing
        tmp_path / ".record.json.q1w2e3r4.tmp",  # the older naming: whose it is cannot be told
        tmp_path / "general_x.bin",
    ]
    for path in kept:
        path.write_text("x")

    assert remove_stale_partials(tmp_path) == [stale_file, stale_dir]
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert capsys.readouterr().out.splitlines() == [
        f"removed stale partial file {stale_file} (2.0 kB) left by a killed run",
        f"removed stale partial file {stale_dir} (5.0 MB) left by a killed run",
    ]
    assert remove_stale_partials(tmp_path / "absent") == []


def test_scratch_folder_of_a_killed_run_is_removed_by_the_next(tmp_path: Path, capsys):
    stale = tmp_path / f".dpruner.{HOST}-{dead_pid()}.a1b2c3d4.tmp"
    stale.mkdir()
    (stale / "general.bin").write_bytes(b"x" * 64)
    with scratch_folder(tmp_path, "dpruner") as folder:
        assert not stale.exists() and folder.is_dir()
        assert PARTIAL.fullmatch(folder.name)  # a killed run's folder is found the same way
    assert not folder.exists()
    assert f"removed stale partial file {stale}" in capsys.readouterr().out


def test_atomic_writers_name_their_temporaries_by_host_and_pid(tmp_path: Path):
    with atomic_open(tmp_path / "record.json") as handle, atomic_dir(tmp_path / "model") as staged:
        handle.write("{}")
        (staged / "config.json").write_text("{}")
        temps = sorted(p.name for p in tmp_path.iterdir())
        matches = [PARTIAL.fullmatch(name) for name in temps]
        assert len(temps) == 2
        assert all(m and m["host"] == HOST and int(m["pid"]) == os.getpid() for m in matches)
        assert remove_stale_partials(tmp_path) == []  # a live writer's temporaries stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "record.json"]


# ---------------------------------------------------------------- the converted model folder

def fake_conversion(target: Path, max_positions: int = 4096) -> None:
    """A small folder written as `convert_gguf` writes one: staged, with its manifest."""
    with atomic_dir(target, replace=False) as staged:
        AutoConfig.for_model("llama", max_position_embeddings=max_positions).save_pretrained(staged)
        (staged / "model.safetensors").write_bytes(os.urandom(64 * 1024))
        write_manifest(staged)


FOLDER_DAMAGE = {
    "truncated": (lambda f: os.truncate(f / "model.safetensors", 1000), "model.safetensors is 1000 bytes"),
    "flipped byte": (lambda f: flip_byte(f / "model.safetensors", 5000), "model.safetensors checksum"),
    "missing file": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "no manifest"),
    "corrupt manifest": (lambda f: (f / "manifest.json").write_text("{"), "manifest is not readable JSON"),
}


@pytest.mark.parametrize("damage", FOLDER_DAMAGE)
def test_verify_manifest_names_the_damage(tmp_path: Path, damage: str):
    folder = tmp_path / "model"
    fake_conversion(folder)
    verify_manifest(folder)  # a clean folder passes
    change, why = FOLDER_DAMAGE[damage]
    change(folder)
    with pytest.raises(Damaged, match=re.escape(why)):
        verify_manifest(folder)


def smollm2(cache: Path):
    cfg = OmegaConf.load(CONF_DIR / "model/smollm2-135m.yaml")
    cfg.cache_dir = str(cache)
    cfg.device = "cpu"
    return cfg


@pytest.mark.parametrize("damage", ["truncated", "no manifest"])
def test_damaged_converted_model_is_discarded_and_converted_again(tmp_path: Path, capsys, damage: str,
                                                                   monkeypatch: pytest.MonkeyPatch):
    conversions: list[Path] = []
    monkeypatch.setattr(gguf_wheels, "convert_gguf", lambda gguf, target: (conversions.append(target),
                                                                         fake_conversion(target)))
    cfg = smollm2(tmp_path)
    folder = Path(prepare_model_files(cfg))
    assert prepare_model_files(cfg) == str(folder) and len(conversions) == 1  # verified, reused
    FOLDER_DAMAGE[damage][0](folder)
    capsys.readouterr()

    check_model(cfg)  # finds the damage: one warning, the folder goes, the wheel is there to rebuild it
    [warning] = warnings_in(capsys.readouterr().out)
    assert warning["what"] == "converted model" and warning["path"] == str(folder)
    assert FOLDER_DAMAGE[damage][1] in warning["why"] and not folder.exists()
    assert prepare_model_files(cfg) == str(folder) and len(conversions) == 2
    verify_manifest(folder)
    assert not capsys.readouterr().out
    assert [p.name for p in folder.parent.iterdir()] == ["smollm2-135m"]  # nothing left aside


@pytest.mark.slow
def test_real_conversion_writes_a_manifest_after_removing_stale_partials(tmp_path: Path, capsys):
    stale = tmp_path / "models" / f".smollm2-135m.{HOST}-{dead_pid()}.k2j3h4g5.tmp"
    stale.mkdir(parents=True)
    cfg = smollm2(tmp_path)
    header = model_context(cfg)  # nothing converted yet: the GGUF header answers
    load_tokenizer(cfg)
    folder = gguf_wheels.converted_dir(cfg)
    verify_manifest(folder)
    listed = json.loads((folder / "manifest.json").read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(listed)
    assert not stale.exists() and "removed stale partial file" in capsys.readouterr().out
    converted = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    assert header == converted == model_context(cfg) == 8192  # the header told what the folder holds


# ---------------------------------------------------------------- model context and model checks

def test_model_context_of_random_models():
    assert model_context(OmegaConf.load(CONF_DIR / "model/tiny-llama.yaml")) == 2048
    gpt2 = OmegaConf.create({"source": "random", "architecture": {"model_type": "gpt2", "n_layer": 1}})
    assert model_context(gpt2) == 1024  # the model type's default, under its own name (n_positions)


def test_model_context_of_the_embedded_model_from_its_gguf_or_converted_folder(tmp_path: Path):
    cfg = smollm2(tmp_path)  # nothing converted under tmp_path: the GGUF header answers
    assert model_context(cfg) == 8192  # the converted folder agrees: the slow conversion test
    fake_conversion(gguf_wheels.converted_dir(cfg), max_positions=4096)
    assert model_context(cfg) == 4096  # a verified converted folder is read first


def pretrained(folder: Path):
    return OmegaConf.create({"source": "pretrained", "name_or_path": str(folder), "dtype": "float32",
                             "device": "cpu"})


def test_model_context_of_a_local_folder(tmp_path: Path):
    AutoConfig.for_model("llama", max_position_embeddings=512).save_pretrained(tmp_path)
    assert model_context(pretrained(tmp_path)) == 512


def test_folder_without_weights_is_a_config_error_naming_it(tmp_path: Path):
    AutoConfig.for_model("llama").save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path))} has a config but no weights"):
        check_model(pretrained(tmp_path))


def test_weights_that_do_not_load_are_a_config_error(tmp_path: Path):
    AutoConfig.for_model("llama").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    check_model(pretrained(tmp_path))  # there is a weight file: the check passes
    with pytest.raises(ConfigError, match=f"model {re.escape(str(tmp_path))} cannot be loaded") as caught:
        load_model(pretrained(tmp_path))
    assert "\n" not in str(caught.value)
