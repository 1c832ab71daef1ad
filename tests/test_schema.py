"""The config schema (bench/schema.py): a misspelt or unknown key is one error naming the nearest
declared ones, `+` adds only entries of the documented extension points, and values equal in
meaning (-0.0 and 0, 1e3 and 1000) give one record key while a boolean is never read as a number.
The property tests throw random keys and JSON values at the schema and at the whole validation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import CompactHydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from bench.cell import validate
from bench.perf.cell import compose_config
from bench.results.records import record_key
from bench.schema import (
    EXTENSION_POINTS,
    SETTINGS,
    Nullable,
    composition_error,
    method_settings,
    normalised_config,
)
from core.errors import ConfigError
from core.paths import PROJECT_ROOT

TINY = ["model=tiny-llama", "eval=smoke", "logger=none", "pruner=wanda", "calib.nsamples=2",
        "calib.seqlen=64", "driver.progress=false"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("schema")


def compose(scratch: Path, *overrides: str):
    return compose_config([*TINY, f"results.dir={scratch / 'runs'}", *overrides])


def error(scratch: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate(compose(scratch, *overrides))
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["+sparsty=0.6"], "unknown setting sparsty; did you mean sparsity?"),
    (["+eval.perplexity.windw=64"], "eval.perplexity.windw; did you mean eval.perplexity.window"),
    (["+domain.perplexity.mine={path: general/wikitext2_test.raw, evrey: 2}"],
     "unknown setting domain.perplexity.mine.evrey; did you mean domain.perplexity.mine.every?"),
    (["+domain.calib.sources.mine={format: casehold, path: legal/casehold/train.jsonl, limt: 3}"],
     "did you mean domain.calib.sources.mine.limit?"),
    (["+model.revison=main"], "unknown setting model.revison; did you mean model.revision?"),
    (["pruner=dpruner", "+pruner.lamda_=1"], "pruner.lamda_ for dpruner; did you mean pruner.lambda_?"),
    (["pruner=dpruner", "+pruner.domain_calib.nsampels=3"], "did you mean pruner.domain_calib.nsamples?"),
    (["pruner=sparsegpt", "+pruner.group=per_row"], "sparsegpt's settings: blocksize, percdamp"),
    (["seed=true"], "seed=True must be a whole number"),
    (["seed=2.5"], "seed=2.5 must be a whole number"),
    (["sparsity=true"], "sparsity=True must be a number"),
    (["force=1"], "force=1 must be true or false"),
    (["model.dtype=16"], "model.dtype=16 must be text"),
    (["eval.perplexity.max_windows=1.5"], "eval.perplexity.max_windows=1.5 must be a whole number or null"),
])
def test_bad_key_or_value_is_one_error(scratch: Path, overrides: list[str], expected: str) -> None:
    assert expected in error(scratch, *overrides)


def test_method_settings_are_its_constructors(scratch: Path) -> None:
    follow = {"reconstruct", "refine", "percdamp", "dsnot"}  # every mask method's (FollowUp)
    assert set(method_settings("sparsegpt")) == {"_target_", "blocksize"} | follow
    assert set(method_settings("magnitude")) == {"_target_", "group"} | follow
    assert {"lambda_", "domain_calib"} | follow <= set(method_settings("dpruner"))
    assert set(method_settings("dense")) == {"_target_"}


def test_extension_points_take_entries_of_your_own(scratch: Path) -> None:
    cell = validate(compose(scratch, "+domain.perplexity.mine={path: general/wikitext2_test.raw, every: 2.0}",
                            "+data.general.perplexity.wiki=general/wikitext2_test.raw"))
    assert cell.config["domain"]["perplexity"]["mine"] == {"path": "general/wikitext2_test.raw", "every": 2}
    assert cell.config["data"]["general"]["perplexity"]["wiki"] == "general/wikitext2_test.raw"


@pytest.mark.parametrize(("one", "other", "setting", "value"), [
    ("sparsity=-0.0", "sparsity=0", "sparsity", 0.0),
    ("seed=1e3", "seed=1000", "seed", 1000),
    ("eval.perplexity.window=128.0", "eval.perplexity.window=128", "eval", None),
])
def test_values_equal_in_meaning_share_one_key(scratch: Path, one: str, other: str, setting: str,
                                               value: Any) -> None:
    cfg = compose(scratch, one)
    first, second = validate(cfg), validate(compose(scratch, other))
    assert first.key == second.key
    assert json.dumps(first.config, sort_keys=True) == json.dumps(second.config, sort_keys=True)
    if value is not None:
        assert type(first.config[setting]) is type(value) and cfg[setting] == value  # the run reads it too
        assert math.copysign(1.0, first.config[setting]) == 1.0


def test_committed_records_normalise_to_themselves() -> None:
    """Every committed record's stored config, with the settings added since at their defaults,
    passes the schema unchanged, so its key is the one the record carries."""
    added = {"allocation": "uniform", "owl": {"threshold": 5.0, "lambda_": 0.08},
             "calib": {"source": "general", "nsamples": 32, "seqlen": 512, "mix": 0.5}}  # dense drops calib
    paths = sorted((PROJECT_ROOT / "results/leaderboard/records").glob("*.json"))
    assert paths
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        stored = {key: value for key, value in record["config"].items() if key != "inputs"}
        retired = stored["data"].pop("fingerprint_cache", None)  # a setting since removed (not in the key)
        normalised, changes = normalised_config({**added, **stored})
        assert not changes, (path.name, changes)
        again = {**{key: normalised[key] for key in stored}, "inputs": record["config"]["inputs"]}
        again["data"] = {**again["data"], **({"fingerprint_cache": retired} if retired else {})}
        assert record_key(again) == record["key"] == path.stem


# --- the command line ---------------------------------------------------------------------------

def run(scratch: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *overrides, "model=tiny-llama", "eval=smoke",
                           "logger=none", f"results.dir={scratch / 'cli'}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["+sparsty=0.6"], "error: unknown setting sparsty; did you mean sparsity?"),
    (["sparsty=0.6"], "error: unknown setting sparsty; did you mean sparsity? (`+key=value` adds only"),
])
def test_command_line_typo_is_one_error_line(scratch: Path, overrides: list[str], expected: str) -> None:
    process = run(scratch, *overrides)
    assert process.returncode == 2, process.stderr
    assert process.stderr.strip().startswith(expected) and len(process.stderr.strip().splitlines()) == 1
    assert "Traceback" not in process.stderr
    assert not list((scratch / "cli").glob("*.json"))


@pytest.mark.parametrize(("override", "expected"), [
    ("eval.perplexity.windw=64", "setting eval.perplexity.windw; did you mean eval.perplexity.window"),
    ("pruner.lamda_=1", "unknown setting pruner.lamda_; did you mean pruner.lambda_?"),
    ("pruner=wanda,dpruner", "pruner=wanda,dpruner lists several values: add -m to run each as a cell"),
])
def test_hydra_composition_error_is_one_line(override: str, expected: str) -> None:
    with pytest.raises(CompactHydraException) as err:
        compose_config([override])
    line = composition_error(err.value)
    assert expected in line and "\n" not in line


# --- properties: random keys and values ---------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=4)
NAMES = st.from_regex(r"[a-z_]{1,10}", fullmatch=True)


def leaves(config: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    found = {}
    for key, value in config.items():
        found.update(leaves(value, (*prefix, key)))
    return found


@pytest.fixture(scope="module")
def base(scratch: Path) -> dict[str, Any]:
    return OmegaConf.to_container(compose(scratch), resolve=True)


def injected(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(base))
    node = config
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return config


@st.composite
def injections(draw: st.DrawFn, base: dict[str, Any], skip: str = "hydra") -> tuple[tuple[str, ...], Any]:
    known = sorted(path for path in leaves(base) if skip not in path)
    path = draw(st.sampled_from(known))
    if draw(st.booleans()):  # a key of one's own beside a known one
        path = (*path[:draw(st.integers(0, len(path) - 1))], draw(NAMES))
    value = draw(JSON | st.integers(-10**20, 10**20) | st.floats(-1e3, 1e3).map(lambda x: float(round(x))))
    return path, value


def extension(path: tuple[str, ...]) -> bool:
    return any(".".join(path).startswith(point + ".") for point in EXTENSION_POINTS)


def declared(path: tuple[str, ...]) -> bool:
    """Whether the schema declares the key, or it names an entry of an extension point."""
    if extension(path):
        return True
    node: Any = {**SETTINGS, "pruner": method_settings("wanda")}
    for part in path:
        node = node.table if isinstance(node, Nullable) else node
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_schema_gives_a_typed_config_or_one_error(base: dict[str, Any], data: st.DataObject) -> None:
    path, value = data.draw(injections(base))
    old = leaves(base).get(path, KeyError)
    try:
        config, _ = normalised_config(injected(base, path, value))
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert declared(path), path  # an unknown key never passes
    new = leaves(config).get(path, value)
    if old is KeyError or old is None or new is None is value or extension(path):
        return  # a key of one's own, a null where one is declared, an entry's value: not typed here
    if isinstance(old, bool):
        assert new is value
    elif isinstance(old, int):
        assert type(new) is int and not isinstance(value, bool) and new == value
    elif isinstance(old, float):
        assert type(new) is float and not isinstance(value, bool) and new == value
        assert math.isfinite(new) and math.copysign(1.0, new) == 1.0 or new < 0
    elif isinstance(old, str):
        assert new is value


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validation_gives_a_cell_or_one_error(base: dict[str, Any], data: st.DataObject) -> None:
    path, value = data.draw(injections(base, skip="architecture"))  # test_bad_architecture_value
    try:
        cell = validate(OmegaConf.create(injected(base, path, value)))
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert len(cell.key) == 16 and type(cell.config["seed"]) is int


def test_bad_architecture_value_is_one_error(base: dict[str, Any]) -> None:
    one_line = r"^model.architecture does not make a llama config: .*hidden_size[^\n]*$"
    with pytest.raises(ConfigError, match=one_line):
        validate(OmegaConf.create(injected(base, ("model", "architecture", "hidden_size"), None)))


def test_normalised_entry_named_with_a_dot_is_written_back(base: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"eval.tasks.limit.a.b: no such task"):
        validate(OmegaConf.create(injected(base, ("eval", "tasks", "limit", "a.b"), 2.0)))
