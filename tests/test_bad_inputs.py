"""A generated sweep of bad input. (a) A table of bad settings, data files, user texts and task
specs, each through the run's own compose + validate (in process): one ConfigError whose message
is one line naming the bad value. (b) Property tests over the one parser layer (core/formats.py,
core/items.py): random JSON values, encodings and line endings give rows and items of the right
types, or a ConfigError -- never another exception, never a number or null read as text."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cell import validate
from bench.defaults import compose_config
from core import formats
from core.errors import ConfigError
from core.items import TASK_KINDS, item

TINY = ["model=tiny-llama", "eval=smoke", "logger=none", "pruner=wanda", "calib.nsamples=2",
        "calib.seqlen=64", "driver.progress=false"]


def case(override: str, *extra: str, named: str | None = None) -> pytest.param:
    """A bad `key=value`; the message must name the value (or `named`) and the key's last part."""
    key, _, value = override.lstrip("+").partition("=")
    leaf = key.rsplit(".", 1)[-1]
    return pytest.param([*extra, override], [leaf, value if named is None else named],
                        id=override)


SETTINGS = [
    *(case(f"sparsity={v}") for v in ("1.5", "-0.1", "1", "1.0", "half", "[0.5]", "nan", "inf")),
    case("sparsity=null", named="None"),
    case("sparsity=true", named="True"),
    *(case(f"pattern={v}") for v in ("4:2", "0:4", "2:0", "abc", "2-4", "2:4:8", "structured", "2:2")),
    case("pattern=2:3", named="2:3"),
    *(case(f"seed={v}") for v in ("abc", "1.5", "[1]")),
    case("seed=null", named="None"),
    case("seed=-1"),
    *(case(f"allocation={v}") for v in ("owl2", "3", "uniformly")),
    *(case(f"owl.threshold={v}", "allocation=owl") for v in ("-1", "abc")),
    case("owl.threshold=0", "allocation=owl"),
    *(case(f"owl.lambda_={v}", "allocation=owl") for v in ("0.6", "abc")),
    case("owl.lambda_=-0.1", "allocation=owl"),
    case("+owl.margin=1", "allocation=owl", named="margin"),
    case("allocation=owl", "pattern=2:4", named="owl"),
    *(case(f"driver.propagate={v}") for v in ("sideways", "3")),
    *(case(f"driver.batch_size={v}") for v in ("0", "-1", "abc", "1.5")),
    *(case(f"driver.error_tokens={v}") for v in ("0", "-5", "abc")),
    *(case(f"driver.offload={v}") for v in ("maybe", "2")),
    case("driver.progress=maybe"),
    case("+driver.turbo=true", named="turbo"),
    *(case(f"calib.nsamples={v}") for v in ("0", "-1", "abc", "1.5")),
    *(case(f"calib.seqlen={v}") for v in ("0", "abc", "4096")),
    *(case(f"calib.mix={v}", "calib=mixed") for v in ("1.5", "-0.1", "abc")),
    case("calib.source=elsewhere"),
    *(case(f"{flag}={v}") for flag in ("force", "save_masks", "save_model") for v in ("maybe", "2")),
    case("+pruner.bogus=1", named="bogus"),
    case("+pruner.bogus=1", "pruner=magnitude", named="bogus"),
    *(case(f"pruner.blocksize={v}", "pruner=sparsegpt") for v in ("0", "-1", "abc")),
    case("pruner.blocksize=3", "pruner=sparsegpt", "pattern=2:4"),
    *(case(f"pruner.percdamp={v}", "pruner=sparsegpt") for v in ("-1", "abc")),
    *(case(f"pruner.{k}={v}", "pruner=dpruner") for k, v in (
        ("importance", "bogus"), ("lambda_", "-1"), ("lr", "abc"), ("lr", "-1"), ("regularizer", "bogus"),
        ("regularizer_grad", "bogus"), ("update_weights", "sometimes"), ("epochs", "0"), ("batch_size", "0"),
        ("warmup_ratio", "1.5"), ("max_grad_norm", "-1"), ("clip", "bogus"), ("blocking", "maybe"),
        ("block_size", "0"), ("percdamp", "-1"), ("reconstruct", "bogus"),
        ("gradient_checkpointing", "maybe"), ("loss_chunk", "0"), ("buffers_on_cpu", "maybe"),
        ("return_freed_memory", "maybe"),
        ("scratch", "bogus"), ("domain_calib.nsamples", "0"), ("domain_calib.seqlen", "0"),
        ("domain_calib.seqlen", "4096"))),
    *(case(f"eval.perplexity.{k}={v}") for k, v in (
        ("window", "0"), ("window", "abc"), ("window", "4096"), ("stride", "0"), ("stride", "abc"),
        ("max_windows", "0"), ("max_windows", "abc"), ("batch_size", "0"))),
    *(case(f"eval.tasks.{k}={v}") for k, v in (
        ("batch_size", "0"), ("limit.casehold", "0"), ("limit.casehold", "-1"), ("limit.casehold", "abc"),
        ("limit.casehold", "1.5"), ("max_new_tokens.billsum", "0"), ("max_new_tokens.billsum", "abc"))),
    case("+eval.tasks.limit.nosuch=1", named="nosuch"),
    *(case(f"model.{k}={v}") for k, v in (("device", "gpu7"), ("dtype", "int8"), ("source", "bogus"))),
    case("domain.calib.max_tokens=abc", "pruner=dpruner"),
    case("domain.calib.max_tokens=0", "pruner=dpruner"),
    case("+domain.calib.sources.billsum.limit=0", "pruner=dpruner"),
    case("+domain.calib.sources.billsum.limit=abc", "pruner=dpruner"),
    case("domain.calib.sources.casehold.format=bogus", "pruner=dpruner"),
    case("+domain.tasks.foo=3", named="foo"),
    case("+domain.perplexity.mine=null", named="mine"),
    case("+domain.perplexity.mine=1"),  # a number where a text source goes
]


@pytest.mark.parametrize(("overrides", "named"), SETTINGS)
def test_bad_setting(tmp_path: Path, overrides: list[str], named: list[str]) -> None:
    assert_one_line_naming(tmp_path, overrides, named)


def assert_one_line_naming(tmp_path: Path, overrides: list[str], named: list[str]) -> None:
    cfg = compose_config([*TINY, f"results.dir={tmp_path / 'runs'}", *overrides])
    try:
        validate(cfg)
    except ConfigError as err:
        message = str(err)
    else:
        raise AssertionError(f"{overrides} validated")
    assert "\n" not in message, message
    for part in named:
        assert part.lower() in message.lower(), f"{part!r} not in {message!r}"


# --- data files: (file name, bytes, where the cell reads it, what the message names) -------------

JSONL = '{"text": "A first line of text for the user."}\n'
PERPLEXITY = "+domain.perplexity.mine={path}"
TASK = ("+domain.tasks.mine={{kind: choice, path: '{path}', fields: {{prompt: q, choices: [a, b], "
        "label: y}}}}")
ROW = {"q": "Which one?", "a": "this", "b": "that", "y": 0}


def rows(*changes: dict) -> bytes:
    return "".join(json.dumps({**ROW, **change}) + "\n" for change in changes).encode()


FILES = [
    ("empty", "t.txt", b"", PERPLEXITY, "no text"),
    ("blank-lines", "t.jsonl", b"\n\n  \n", PERPLEXITY, "no text"),
    ("latin-1", "t.txt", "caf\xe9 au lait\n".encode("latin-1"), PERPLEXITY, "not UTF-8"),
    ("utf-16", "t.txt", "some text\n".encode("utf-16"), PERPLEXITY, "not UTF-8"),
    ("jsonl-latin-1", "t.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"), PERPLEXITY, "not UTF-8"),
    ("jsonl-broken", "t.jsonl", JSONL.encode() + b'{"text": broken\n', PERPLEXITY, ":2 is not valid JSON"),
    ("jsonl-list", "t.jsonl", b'["a", "list"]\n', PERPLEXITY, ":1 is a JSON list"),
    ("jsonl-number", "t.jsonl", b"3\n", PERPLEXITY, ":1 is a JSON int"),
    ("jsonl-string", "t.jsonl", b'"text"\n', PERPLEXITY, ":1 is a JSON str"),
    ("jsonl-null-row", "t.jsonl", b"null\n", PERPLEXITY, ":1 is a JSON NoneType"),
    ("jsonl-no-field", "t.jsonl", b'{"body": "x"}\n', PERPLEXITY, "lacks field"),
    ("jsonl-text-null", "t.jsonl", b'{"text": null}\n', PERPLEXITY, "NoneType"),
    ("jsonl-text-number", "t.jsonl", b'{"text": 12345}\n', PERPLEXITY, "12345"),
    ("jsonl-text-list", "t.jsonl", b'{"text": ["a", "b"]}\n', PERPLEXITY, "list"),
    ("jsonl-cr-only", "t.jsonl", (JSONL * 2).replace("\n", "\r").encode(), PERPLEXITY, "not valid JSON"),
    ("jsonl-bom-twice", "t.jsonl", "\ufeff\ufeff".encode() + JSONL.encode(), PERPLEXITY,
     ":1 is not valid JSON"),
    ("jsonl-bom-utf16", "t.jsonl", JSONL.encode("utf-16"), PERPLEXITY, "not UTF-8"),
    ("jsonl-truncated", "t.jsonl", JSONL.encode()[:-8], PERPLEXITY, ":1 is not valid JSON"),
    ("txt-only-spaces", "t.txt", b"   \r\n\t\n", PERPLEXITY, "no text"),
    ("unknown-extension", "t.docx", b"text", PERPLEXITY, "cannot tell the format"),
    ("task-empty", "t.jsonl", b"", TASK, "mine"),
    ("task-not-utf8", "t.jsonl", b'{"q": "caf\xe9", "a": "x", "b": "y", "y": 0}\n', TASK, "not UTF-8"),
    ("task-choice-empty", "t.jsonl", rows({"a": ""}), TASK, "is empty"),
    ("task-choice-blank", "t.jsonl", rows({"b": "  "}), TASK, "is empty"),
    ("task-choice-null", "t.jsonl", rows({"a": None}), TASK, "NoneType"),
    ("task-choice-number", "t.jsonl", rows({"b": 7}), TASK, "int"),
    ("task-prompt-number", "t.jsonl", rows({"q": 42}), TASK, "42"),
    ("task-prompt-null", "t.jsonl", rows({"q": None}), TASK, "NoneType"),
    ("task-label-out-of-range", "t.jsonl", rows({"y": 2}), TASK, "0..1"),
    ("task-label-text", "t.jsonl", rows({"y": "first"}), TASK, "first"),
    ("task-missing-field", "t.jsonl", b'{"q": "Which?", "a": "x", "y": 0}\n', TASK, "lacks field"),
    ("task-second-row-bad", "t.jsonl", rows({}, {"a": None}), TASK, ":2"),
]


@pytest.mark.parametrize(("name", "data", "entry", "named"),
                         [pytest.param(*spec[1:], id=spec[0]) for spec in FILES])
def test_bad_data_file(tmp_path: Path, name: str, data: bytes, entry: str, named: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert_one_line_naming(tmp_path, [entry.format(path=path)], [named])


@pytest.mark.parametrize("data", [
    pytest.param('{"text": "one\u2028line \u2029 and \u0085 more"}\n'.encode(), id="u2028-in-string"),
    pytest.param(b"\xef\xbb\xbf" + JSONL.encode(), id="bom"),
    pytest.param(JSONL.replace("\n", "\r\n").encode() * 2, id="crlf"),
    pytest.param(JSONL.encode() + JSONL.encode()[:-1], id="no-final-newline"),
])
def test_good_data_file_is_read(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    cell = validate(compose_config([*TINY, f"results.dir={tmp_path / 'runs'}", PERPLEXITY.format(path=path)]))
    assert str(path) in cell.config["inputs"]


SPECS = [
    ("no-path", "{kind: choice, fields: {prompt: q, choices: [a, b], label: y}}", "no path"),
    ("unknown-kind", "{kind: essay, path: '{path}'}", "essay"),
    ("unknown-key", "{kind: choice, path: '{path}', colour: red, fields: {prompt: q, choices: [a, b], "
                    "label: y}}", "colour"),
    ("missing-role", "{kind: choice, path: '{path}', fields: {prompt: q, label: y}}", "choices"),
    ("unknown-role", "{kind: choice, path: '{path}', fields: {prompt: q, choices: [a, b], label: y, "
                     "hint: h}}", "hint"),
    ("role-number", "{kind: choice, path: '{path}', fields: {prompt: 3, choices: [a, b], label: y}}", "3"),
    ("one-choice", "{kind: choice, path: '{path}', fields: {prompt: q, choices: [a], label: y}}", "choices"),
    ("labels-not-a-map", "{kind: nli, path: '{path}', fields: {premise: q, hypothesis: a, label: y}, "
                         "labels: [yes, no]}", "labels"),
    ("labels-unknown-class", "{kind: nli, path: '{path}', fields: {premise: q, hypothesis: a, label: y}, "
                             "labels: {0: maybe}}", "maybe"),
    ("missing-file", "{kind: choice, path: '{path}.missing', fields: {prompt: q, choices: [a, b], "
                     "label: y}}", "missing"),
]


@pytest.mark.parametrize(("spec", "named"), [pytest.param(*s[1:], id=s[0]) for s in SPECS])
def test_bad_task_spec(tmp_path: Path, spec: str, named: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(rows({}, {}))
    assert_one_line_naming(tmp_path, ["+domain.tasks.mine=" + spec.replace("{path}", str(path))], [named])


# --- (b) properties of the parser layer ----------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
ROWS = st.lists(st.dictionaries(st.sampled_from(["text", "q", "a", "b", "y", "other"]), JSON_VALUES,
                                max_size=5) | JSON_VALUES, min_size=1, max_size=4)
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "latin-1")
LINE_ENDS = ("\n", "\r\n", "\r")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_file(data: bytes, reader: Callable[[Path], object]) -> object:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        path.write_bytes(data)
        return reader(path)


def encoded(values: list, encoding: str, end: str) -> bytes:
    return "".join(json.dumps(v, ensure_ascii=False) + end for v in values).encode(encoding, "replace")


@FAST
@given(ROWS, st.sampled_from(ENCODINGS), st.sampled_from(LINE_ENDS))
def test_jsonl_rows_are_the_objects_written_or_one_error(values: list, encoding: str, end: str) -> None:
    data = encoded(values, encoding, end)
    try:
        rows_read = read_file(data, formats.read_jsonl)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    plain = data.startswith(b"\xef\xbb\xbf") or data.decode("utf-8") == data.decode("latin-1")
    lossless = data == encoded(values, "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8", end)
    if end != "\r" and (encoding.startswith("utf-8") or plain) and lossless:
        assert rows_read == values  # every value is an object here: a line per object, as written
    for row in rows_read:
        try:
            value = formats.text(row, "text")
        except ConfigError as err:
            assert "\n" not in str(err) and not isinstance(row.get("text"), str)
        else:
            assert type(value) is str and value == row["text"]


@FAST
@given(st.sampled_from(sorted(TASK_KINDS)), st.dictionaries(st.sampled_from(["q", "a", "b", "y"]),
                                                            JSON_VALUES, max_size=4))
def test_an_item_has_text_where_text_belongs_or_one_error(kind: str, row: dict) -> None:
    fields = {"nli": {"premise": "q", "hypothesis": "a", "label": "y"},
              "yesno": {"question": "q", "context": "a", "label": "y"},
              "choice": {"prompt": "q", "choices": ["a", "b"], "label": "y"},
              "summary": {"source": "q", "summary": "a"}}[kind]
    try:
        read = item(kind, formats.Record(row, "rows.jsonl:1"), fields)
    except ConfigError as err:
        assert "\n" not in str(err) and "rows.jsonl:1" in str(err)
        return
    texts = {k: v for k, v in read.items() if k != "label"}
    for value in texts.values():
        assert all(type(v) is str and v.strip() for v in value) if isinstance(value, list) else \
            type(value) is str
    assert type(read.get("label", 0)) is int
    assert type(row["q"]) is str  # the prompt, question, premise or source: never a coerced value


def test_floats_read_as_numbers_are_refused_as_text() -> None:
    row = formats.Record({"text": math.pi}, "f:1")
    with pytest.raises(ConfigError, match="holds float"):
        formats.text(row, "text")
