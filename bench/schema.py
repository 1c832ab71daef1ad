"""Every setting of a cell declared once, with its type: the resolved config is checked against
these declarations before anything else reads it, so a misspelt key (`+sparsty=0.6`) is an error
naming the nearest known one, never a silently ignored setting, and every value is normalised
before it enters the record key (`seed=1e3` is 1000, `sparsity=-0.0` is 0.0, `seed=true` fails).

A declaration is a type (`int`, `float | None`, `bool`, `str`, `Any`: left to the reader that
uses it), a dict of named settings, or `Entries`: an extension point whose entry names are the
user's own (`domain.perplexity.<name>`, `domain.tasks.<name>`, ...) and whose entries are declared.
Method options are declared by each method's constructor (or D-Pruner's options dataclass), and
the driver's by `DriverSettings`; ranges stay with the code that reads each value."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.errors import CompactHydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from core.errors import ConfigError
from pruners import REGISTRY
from pruners.dpruner.options import DPrunerOptions
from pruners.dsnot import DSnoTSettings
from pruners.mask_update import FollowUp
from pruners.settings import DriverSettings


@dataclass(frozen=True)
class Entries:
    """An extension point: entries under names of the user's choosing, each declared by `entry`;
    `plain`: an entry that is not a mapping (a plain path, null) goes to its reader as it is."""

    entry: Any
    plain: bool = False


@dataclass(frozen=True)
class Nullable:
    """A group of settings that may be null as a whole (a hub set where a local file is used)."""

    table: dict[str, Any]


def _dataclass_fields(cls: type) -> dict[str, Any]:
    """A dataclass's fields as declarations; a mapping field with a dict default takes its keys."""
    hints = typing.get_type_hints(cls)
    declared = {}
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
        is_table = isinstance(default, dict) and typing.get_origin(hints[field.name]) is not None
        declared[field.name] = ({key: typing.get_args(hints[field.name])[1] for key in default}
                                if is_table else hints[field.name])
    return declared


HUB = {"id": str, "name": str | None, "split": str | None, "field": str}
TEXT = {"path": str | None, "format": str, "field": str, "every": int | None, "hub": Nullable(HUB)}
CALIB_SOURCE = {"format": str, "path": str, "exclude_ids": str, "skip_every": int, "limit": int | None}
TASK = {"path": str | None, "split": str | None, "hub": Nullable(HUB),  # a built-in task's file or hub set
        "kind": str, "fields": Any, "labels": Any, "like": str | None}  # a task of your own
MODEL = {
    "name": str, "source": str, "wheel": str, "package": str, "gguf_file": str, "assemble": bool,
    "name_or_path": str | None, "revision": str | None, "trust_remote_code": bool, "dtype": str,
    "device": str, "device_map": str | None, "shard_rows": bool, "cache_dir": str, "init_seed": int,
    "architecture": Entries(Any),  # a transformers config of the user's choosing
}
MODEL["tokenizer_from"] = dict(MODEL)
SETTINGS: dict[str, Any] = {
    "model": MODEL,
    "pruner": Any,  # declared by the method `pruner._target_` names (method_settings)
    "domain": {"name": str, "perplexity": Entries(TEXT, plain=True),
               "calib": {"max_tokens": int | None, "exclude_evaluated": bool,
                         "sources": Entries(CALIB_SOURCE)},
               "tasks": Entries(TASK, plain=True)},
    "calib": {"source": str, "nsamples": int, "seqlen": int, "mix": float},
    "eval": {"name": str,
             "perplexity": {"window": int, "stride": int, "max_windows": int | None, "batch_size": int},
             "tasks": {"batch_size": int, "limit": Entries(int | None), "max_new_tokens": Entries(int)}},
    "logger": {"name": str, "project": str | None, "entity": str | None, "group": str | None,
               "mode": str, "dir": str},
    "sparsity": float, "pattern": str, "allocation": str, "owl": {"threshold": float, "lambda_": float},
    "seed": int, "force": bool, "save_masks": bool, "save_model": bool,
    "driver": _dataclass_fields(DriverSettings),
    "data": {"root": str | None,
             "general": {"calib": TEXT, "perplexity": Entries(TEXT, plain=True)}},
    "results": {"dir": str},
    "hydra": Any,
}
EXTENSION_POINTS = ("model.architecture", "domain.perplexity", "domain.calib.sources", "domain.tasks",
                    "data.general.perplexity", "eval.tasks.limit", "eval.tasks.max_new_tokens")
COMMON_OPTIONS = ("self", "sparsity", "pattern", "driver", "allocation")  # the cell's, not the group's
METHOD_OPTIONS: dict[str, type] = {"dpruner": DPrunerOptions}  # methods that take **options


def method_settings(name: str) -> dict[str, Any]:
    """The settings of `pruner=<name>`: its options dataclass's fields, else its constructor's
    own parameters (the one place each option is declared), and, for every method but dense, what
    may follow its mask (pruners/mask_update.py FollowUp)."""
    cls = REGISTRY[name]
    follow = {} if name == "dense" else {**_dataclass_fields(FollowUp),
                                         "dsnot": _dataclass_fields(DSnoTSettings)}
    if name in METHOD_OPTIONS:
        declared = _dataclass_fields(METHOD_OPTIONS[name])
    else:
        hints = typing.get_type_hints(cls.__init__)
        parameters = inspect.signature(cls.__init__).parameters.items()
        declared = {param: hints.get(param, Any) for param, spec in parameters
                    if param not in COMMON_OPTIONS and spec.kind is not inspect.Parameter.VAR_KEYWORD}
    return {"_target_": str, **{key: follow.get(key, kind) for key, kind in declared.items()}, **follow}


def _method(target: Any) -> str:
    """The registered method a `pruner._target_` names."""
    try:
        cls = get_class(target) if isinstance(target, str) else None
    except Exception:  # an unimportable path: Hydra raises ImportError or ValueError
        cls = None
    name = getattr(cls, "name", None)
    if name not in REGISTRY or REGISTRY[name] is not cls:
        raise ConfigError(f"pruner._target_={target!r} is not a registered method; "
                          f"choose one of {sorted(REGISTRY)}")
    return name


def _nearest(parent: str, name: str, known: list[str]) -> str:
    """The declared keys closest to a misspelt `name` under `parent`, else every declared one."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if not close:
        return f"known here: {', '.join(known)}"
    return "did you mean " + " or ".join(f"{parent}.{key}" if parent else key for key in close) + "?"


def _options(kind: Any) -> tuple[Any, ...]:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return typing.get_args(kind)
    return (kind,)


def _leaf(key: str, value: Any, kind: Any) -> Any:
    """One value of a declared type, normalised: integral floats are whole numbers, -0.0 is 0.0,
    and a boolean is never read as a number (nor a number as a boolean or text)."""
    options = _options(kind)
    nullable = " or null" if type(None) in options else ""
    if Any in options or (value is None and nullable):
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if int in options:
        if number and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} must be a whole number{nullable}")
    if float in options:
        if number and math.isfinite(value):
            return float(value) + 0.0  # -0.0 + 0.0 is 0.0
        raise ConfigError(f"{key}={value!r} must be a number{nullable}")
    if bool in options:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false{nullable}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key}={value!r} must be text{nullable} (quote it: {key}='{value}')")


def _table(path: tuple, value: Any, declared: Mapping[str, Any], changes: list) -> dict[str, Any]:
    key = ".".join(map(str, path))
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}={value!r} must be a group of settings: {', '.join(declared)}")
    normalised = {}
    for name, item in value.items():
        if name not in declared:
            raise ConfigError(f"unknown setting {'.'.join(map(str, (*path, name)))}; "
                              f"{_nearest(key, str(name), list(declared))}")
        normalised[name] = _normalise((*path, name), item, declared[name], changes)
    return normalised


def _normalise(path: tuple, value: Any, declared: Any, changes: list) -> Any:
    """`value` (at `path`) checked against its declaration; each changed leaf is noted in `changes`."""
    if isinstance(declared, Nullable):
        if value is None:
            return None
        declared = declared.table
    if isinstance(declared, dict):
        return _table(path, value, declared, changes)
    if isinstance(declared, Entries):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{'.'.join(map(str, path))}={value!r} must map names of your choosing to "
                              "their settings")
        return {name: item if declared.plain and not isinstance(item, Mapping)
                else _normalise((*path, name), item, declared.entry, changes)
                for name, item in value.items()}
    normalised = _leaf(".".join(map(str, path)), value, declared)
    if repr(normalised) != repr(value):
        changes.append((path, normalised))
    return normalised


def _pruner(value: Any, changes: list) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"pruner={value!r} must be a method's settings; choose pruner=<name>")
    name = _method(value.get("_target_"))
    declared = method_settings(name)
    unknown = [str(key) for key in value if key not in declared]
    if unknown:
        allowed = [key for key in declared if key != "_target_"]
        close = difflib.get_close_matches(unknown[0], allowed, n=1, cutoff=0.6)
        raise ConfigError(f"unknown setting pruner.{unknown[0]} for {name}; "
                          + (f"did you mean pruner.{close[0]}? " if close else "")
                          + f"{name}'s settings: {', '.join(allowed) or 'none'}"
                          + " (sparsity, pattern, allocation and driver are the cell's, not the method's)")
    return _table(("pruner",), value, declared, changes)


def normalised_config(plain: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[tuple, Any]]]:
    """A resolved plain config checked against the declarations: the normalised config and the
    (path of keys, normalised value) of every value that normalising changed."""
    changes: list[tuple[tuple, Any]] = []
    missing = [key for key in SETTINGS if key not in plain and key != "hydra"]
    if missing:
        raise ConfigError(f"missing setting {missing[0]}; conf/config.yaml declares it")
    config = _table((), {key: value for key, value in plain.items() if key != "pruner"}, SETTINGS, changes)
    config["pruner"] = _pruner(plain["pruner"], changes)
    return {key: config[key] for key in plain}, changes


def checked_config(cfg: DictConfig) -> dict[str, Any]:
    """The cell's resolved config, checked and normalised, with the normalised values written
    back into `cfg`, so that the run reads exactly what its record key was computed from."""
    config, changes = normalised_config(OmegaConf.to_container(cfg, resolve=True))
    for (*parents, last), value in changes:
        node = cfg
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def composition_error(err: CompactHydraException) -> str:
    """Hydra's own composition error as one line with its advice: a misspelt key names the
    nearest declared ones (Hydra's advice, `+key=value`, adds only entries of your own)."""
    lines = [line.strip().replace("\\'", "'") for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    several = re.match(r"Ambiguous value for argument '([^=]+)=(.+)'", first)
    if several:
        setting = f"{several.group(1)}={several.group(2)}"
        return f"{setting} lists several values: add -m to run each as a cell (python3 run.py -m {setting})"
    match = re.match(r"Could not override '([^']+)'", first)
    if not match:
        return "; ".join(line.rstrip(".") for line in lines)
    *parents, last = match.group(1).split(".")
    declared: Any = SETTINGS
    for part in parents:
        declared = declared.get(part) if isinstance(declared, dict) else None
    if parents == ["pruner"]:
        declared = {key: None for name in sorted(REGISTRY) for key in method_settings(name)}
    known = list(declared) if isinstance(declared, dict) else []
    hint = f"; {_nearest('.'.join(parents), last, known)}" if known else ""
    return (f"unknown setting {match.group(1)}{hint} (`+key=value` adds only entries of your own, under "
            f"{', '.join(EXTENSION_POINTS)})")
