"""Inputs knowable from the config, the files and the model's config that used to fail after the
model loaded (some after pruning): each now fails, or warns, in validation, before any weights load.

Each case runs the validation run.py runs (bench.cell.validate on a composed config) on the tiny
random model, whose config and borrowed tokenizer cost no weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_faults import check, fails, write

SENTENCE = "A plain sentence of the user's own calibration text, long enough to make some tokens. "


def jsonl(path: Path, texts: list[str]) -> Path:
    return write(path, "".join(json.dumps({"text": text}) + "\n" for text in texts))


# --- names: one metric key per text or task ---------------------------------------------------

def test_perplexity_text_named_like_a_task_fails(tmp_path: Path) -> None:
    text = write(tmp_path / "book.txt", SENTENCE * 20)
    message = fails(tmp_path, f"+domain.perplexity.casehold={text}")
    assert "legal/casehold" in message and "domain.perplexity.casehold" in message
    assert "domain.tasks.casehold" in message


def test_domain_named_general_cannot_shadow_a_general_text(tmp_path: Path) -> None:
    text = write(tmp_path / "book.txt", SENTENCE * 20)
    message = fails(tmp_path, "domain.name=general", f"+domain.perplexity.wikitext2={text}")
    assert "general/wikitext2" in message and "data.general.perplexity.wikitext2" in message


# --- N:M against the model's widths -----------------------------------------------------------

def test_nm_group_that_does_not_divide_a_width_fails(tmp_path: Path) -> None:
    message = fails(tmp_path, "pattern=1:3")  # tiny-llama: in-features 64 (hidden) and 128 (MLP)
    assert "pattern=1:3" in message and "64" in message and "M=3" in message


def test_nm_group_that_divides_every_width_passes(tmp_path: Path) -> None:
    assert check(tmp_path, "pattern=2:4").config["pattern"] == "2:4"


def test_nm_group_wider_than_the_mlp_fails_naming_its_matrix(tmp_path: Path) -> None:
    message = fails(tmp_path, "pattern=1:128")  # divides 128 (down_proj) but not 64 (the rest)
    assert "q_proj" in message and "64" in message


# --- texts too short to score -----------------------------------------------------------------

def test_perplexity_text_of_one_token_fails(tmp_path: Path) -> None:
    text = write(tmp_path / "tiny.txt", "x")
    message = fails(tmp_path, f"+domain.perplexity.mine={text}")
    assert "legal/mine" in message and "1 token" in message and "at least 2 tokens" in message


# --- calibration streams against their windows ------------------------------------------------

def test_general_calibration_shorter_than_one_window_fails(tmp_path: Path) -> None:
    short = jsonl(tmp_path / "calib.jsonl", [SENTENCE])
    message = fails(tmp_path, f"data.general.calib.path={short}")
    assert "data.general.calib" in message and "seqlen=64" in message and "tokens" in message


def test_domain_calibration_shorter_than_one_window_fails(tmp_path: Path) -> None:
    message = fails(tmp_path, "pruner=dpruner", "pruner.cache_dir=null", "~domain.calib.sources.billsum",
                    "+domain.calib.sources.casehold.limit=1", "pruner.domain_calib.seqlen=1024")
    assert "domain.calib" in message and "pruner.domain_calib.seqlen=1024" in message  # one item: ~360 tokens


def test_domain_calibration_long_enough_passes(tmp_path: Path) -> None:
    check(tmp_path, "pruner=dpruner", "pruner.cache_dir=null", "pruner.domain_calib.seqlen=64")


def test_mostly_overlapping_windows_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = jsonl(tmp_path / "calib.jsonl", [SENTENCE * 8] * 4)  # a few hundred tokens
    check(tmp_path, f"data.general.calib.path={small}", "calib.nsamples=32")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: calibration")]
    assert len(lines) == 1, lines
    assert "32 windows x 64 tokens" in lines[0] and "windows on average" in lines[0]


def test_domain_token_budget_that_makes_windows_overlap_warns(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    check(tmp_path, "pruner=dpruner", "pruner.cache_dir=null", "pruner.domain_calib.seqlen=64",
          "domain.calib.max_tokens=300")
    out = capsys.readouterr().out
    assert "warning: calibration: 32 windows x 64 tokens" in out and "max_tokens=300" in out


def test_default_windows_do_not_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check(tmp_path)
    assert "warning:" not in capsys.readouterr().out


# --- cache folders that are files -------------------------------------------------------------

@pytest.mark.parametrize("setting", ["model.cache_dir", "pruner.cache_dir", "pruner.scratch_dir"])
def test_cache_folder_that_is_a_file_fails(tmp_path: Path, setting: str) -> None:
    blocker = write(tmp_path / "a_file", "not a folder")
    dpruner = ["pruner=dpruner"] if setting.startswith("pruner.") else []
    message = fails(tmp_path, *dpruner, f"{setting}={blocker}")
    assert f"{setting}={blocker}" in message and "is a file" in message


def test_cache_folder_below_a_file_fails(tmp_path: Path) -> None:
    blocker = write(tmp_path / "a_file", "not a folder")
    message = fails(tmp_path, "pruner=dpruner", f"pruner.scratch_dir={blocker}/scratch")
    assert "pruner.scratch_dir" in message and str(blocker) in message


def test_cache_environment_variable_that_is_a_file_fails(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = write(tmp_path / "a_file", "not a folder")
    monkeypatch.setenv("DPB_CACHE_DIR", str(blocker))
    message = fails(tmp_path)
    assert f"DPB_CACHE_DIR={blocker}" in message and "is a file" in message
