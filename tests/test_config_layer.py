"""The one config layer (harness/config.py, issue 16): every config file kind refuses a bool where
it asks for a number and a string where it asks for an integer, with one message shape (file,
key path, expected, got); unknown keys are reported first; the published JSON Schemas carry no
pydantic artefacts (null, generated titles); fixtures/expectations.toml is validated by its model."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from test_config_fuzz import expectation_docs, toml

from harness import config, config_schemas, manifest, plugin, tolerances, zoo
from harness.errors import ConfigError
from harness.latency import budgets
from harness.preprocess import deploy

IDS = list(zoo.load_zoo())
PRE = {"pipeline": "resize_then_crop", "resize": 256, "crop": 224, "interpolation": "bilinear", "color": "RGB",
       "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
BUDGET = """[profile]
runtime = "ort"
threads = 2
peak_gflops = 198.0
[profile.match]
cores = 2
[models.repvgg_a0]
fp32 = { b1 = 9.0 }
"""
EXPECTATION = '[[xfail]]\ntest = "t"\nparams = "*"\nreason = "r"\nstrict = true\n'


def _zoo(tmp_path: Path, old: str, new: str) -> Callable[[], object]:
    f = tmp_path / "hrnet.toml"
    shutil.copy(zoo.ZOO_DIR / "hrnet.toml", f)
    text = f.read_text(encoding="utf-8")
    assert old in text, old
    f.write_text(text.replace(old, new, 1), encoding="utf-8")
    return lambda: zoo.load_family_file(f)


def _text(tmp_path: Path, name: str, text: str, load: Callable[[Path], object]) -> Callable[[], object]:
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return lambda: load(f)


def _pre(tmp_path: Path, **change) -> Callable[[], object]:
    return _text(tmp_path, "pre.json", json.dumps({**PRE, **change}), deploy.load)


# (file kind, planted defect, loader, key path, expected words, got)
BOOL_AS_NUMBER = [
    ("zoo card", "input_size = true", lambda t: _zoo(t, "input_size = 224", "input_size = true"),
     "models.hrnet_w18_small_v1.input_size", "expected int", "True (bool)"),
    ("zoo card", "params_m = true", lambda t: _zoo(t, "params_m = 13.2", "params_m = true"),
     "models.hrnet_w18_small_v1.published[0].params_m", "expected int or float", "True (bool)"),
    ("zoo card", "mean with a bool", lambda t: _zoo(t, "mean = [0.485,", "mean = [true,"),
     "models.hrnet_w18_small_v1.preprocess.mean", "expected a list of 3 numbers", "(list)"),
    ("manifest", "onnx = true", lambda t: _text(t, "m.toml", "[models.repvgg_a0]\nonnx = true\n",
                                                  lambda f: manifest.load(f, IDS)),
     "models.repvgg_a0.onnx", "expected a path string", "True (bool)"),
    ("budget profile", "threads = true", lambda t: _text(t, "p.toml", BUDGET.replace("threads = 2", "threads = true"),
                                                         lambda f: budgets.load_profile(f, IDS)),
     "profile.threads", "expected an integer >= 1", "True (bool)"),
    ("budget profile", "b1 = true", lambda t: _text(t, "p.toml", BUDGET.replace("b1 = 9.0", "b1 = true"),
                                                    lambda f: budgets.load_profile(f, IDS)),
     "models.repvgg_a0.fp32.b1", "expected a number of milliseconds > 0", "True (bool)"),
    ("budget profile", "cores = false", lambda t: _text(t, "p.toml", BUDGET.replace("cores = 2", "cores = false"),
                                                        lambda f: budgets.load_profile(f, IDS)),
     "profile.match.cores", "expected an integer", "False (bool)"),
    ("tolerances", "value = true", lambda t: _text(t, "tol.toml", '[latency]\nx = { value = true, why = "w" }\n',
                                                   lambda f: tolerances.tolerance("latency", "x", f)),
     "latency.x", 'expected { value = <number>, why = "..." }', "(dict)"),
    ("preprocess", "crop = true", lambda t: _pre(t, crop=True), "crop", "expected an integer", "True (bool)"),
    ("preprocess", "mean with a bool", lambda t: _pre(t, mean=[True, 1.0, 2.0]), "mean", "expected a list of 3 numbers",
     "(list)"),
    ("preprocess", "crop_fraction = true", lambda t: _pre(t, pipeline="crop_then_resize", resize=None,
                                                          crop_fraction=True),
     "crop_fraction", "expected a number in (0, 1]", "True (bool)"),
    ("expectations", "strict = 1", lambda t: _text(t, "expectations.toml", EXPECTATION.replace("true", "1"),
                                                   config.load_expectations),
     "xfail[0].strict", "expected true or false", "1 (int)"),
]

STRING_AS_INTEGER = [
    ("zoo card", lambda t: _zoo(t, "input_size = 224", 'input_size = "224"'), "models.hrnet_w18_small_v1.input_size",
     "expected int", "'224' (str)"),
    ("budget profile", lambda t: _text(t, "p.toml", BUDGET.replace("cores = 2", 'cores = "2"'),
                                       lambda f: budgets.load_profile(f, IDS)), "profile.match.cores",
     "expected an integer", "'2' (str)"),
    ("preprocess", lambda t: _pre(t, crop="224"), "crop", "expected an integer", "'224' (str)"),
    ("expectations", lambda t: _text(t, "expectations.toml", EXPECTATION.replace('test = "t"', "test = 3"),
                                     config.load_expectations), "xfail[0].test", "expected a string", "3 (int)"),
]


def _error(make: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        make()
    return e.value


@pytest.mark.parametrize("kind, defect, maker, key, expected, got", BOOL_AS_NUMBER,
                         ids=[f"{k}: {d}" for k, d, *_ in BOOL_AS_NUMBER])
def test_a_bool_is_never_a_number_in_any_file(tmp_path, kind, defect, maker, key, expected, got):
    e = _error(maker(tmp_path))
    msg = str(e)
    assert str(e.file) in msg and e.file.name in msg, f"{kind}: the message names the file: {msg}"
    assert e.key == key and f"[{key}]" in msg, f"{kind}: the message names the key {key}: {msg}"
    assert expected in e.problem and got in e.problem, f"{kind}: expected and got: {msg}"


@pytest.mark.parametrize("kind, maker, key, expected, got", STRING_AS_INTEGER, ids=[k for k, *_ in STRING_AS_INTEGER])
def test_a_string_is_never_an_integer_in_any_file(tmp_path, kind, maker, key, expected, got):
    e = _error(maker(tmp_path))
    assert e.key == key and expected in e.problem and f"got {got}" in e.problem, str(e)


def test_every_file_kind_is_covered():
    kinds = {k for k, *_ in BOOL_AS_NUMBER}
    assert kinds == {"zoo card", "manifest", "budget profile", "tolerances", "preprocess", "expectations"}


def test_every_config_model_refuses_unknown_keys():
    """Strict is the base of every file's models; the only tables with free keys are typed
    (a tolerance section's entries)."""
    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    models = [m for m in subclasses(config.Strict) if m.__module__.startswith("harness.")]
    assert {m.__module__ for m in models} >= {"harness.zoo", "harness.manifest", "harness.tolerances", "harness.config",
                                              "harness.latency.budgets", "harness.preprocess.deploy"}
    for m in models:
        assert m.model_config.get("strict") is True, m
        if m.model_config.get("extra") != "forbid":
            assert m is tolerances.Section and "__pydantic_extra__" in m.__annotations__, m


def test_unknown_keys_come_first_and_are_listed_together(tmp_path):
    e = _error(_pre(tmp_path, colour="RGB", size=3, crop="x"))
    assert e.key == "colour" and "unknown key(s) ['colour', 'size']" in e.problem and "did you mean 'color'?" in e.problem
    assert "known keys" in e.fix and "'color'" in e.fix


def test_the_key_path_names_list_positions_and_nested_tables(tmp_path):
    e = _error(_zoo(tmp_path, 'sources = ["official"]', 'sources = ["oficial"]'))
    assert e.key == "models.hrnet_w18_small_v1.published[0].sources[0]"
    assert "'oficial' is not one of ['official', 'mmcls', 'timm', 'ppcls']" in e.problem


def test_a_long_value_is_shortened_in_the_message(tmp_path):
    e = _error(_pre(tmp_path, note=["x" * 500]))
    assert e.key == "note" and len(e.problem) < 200 and e.problem.endswith("(list)")


def test_config_error_of_a_plain_type_uses_the_shared_words():
    class T(config.Strict):
        n: int
        flag: bool = False

    e = _error(lambda: config.validate(T, {"n": 1.5, "flag": "yes"}, "t.toml"))
    assert (e.key, e.problem) == ("n", "expected an integer, got 1.5 (float)")
    e = _error(lambda: config.validate(T, {"n": 1, "flag": 1}, "t.toml"))
    assert (e.key, e.problem) == ("flag", "expected true or false, got 1 (int)")
    e = _error(lambda: config.validate(T, {}, "t.toml", shape="here"))
    assert (e.key, e.problem, e.fix) == ("n", "missing required key 'n'", "add n = ... (file shape: here)")


def test_the_published_schemas_have_no_null_and_no_generated_titles():
    for name, gen in config_schemas.GENERATORS.items():
        text = config_schemas.render(gen())
        assert '"null"' not in text and "null," not in text and "null\n" not in text, f"{name}: a null leaked"
        schema = json.loads(text)

        def titles(node: object, path: str = "") -> list[str]:
            if isinstance(node, dict):
                return [f"{path}/title" for k in node if k == "title" and path] + [
                    t for k, v in node.items() for t in titles(v, f"{path}/{k}")]
            if isinstance(node, list):
                return [t for i, v in enumerate(node) for t in titles(v, f"{path}/{i}")]
            return []

        assert titles(schema) == [], f"{name}: pydantic's generated titles: {titles(schema)}"
        assert schema["title"].startswith("zooconform ")


def test_the_schema_generator_drops_null_from_optional_fields():
    class T(config.Strict):
        """A test table."""

        n: int | None = None

    assert config.json_schema(T) == {"additionalProperties": False, "description": "A test table.",
                                     "properties": {"n": {"type": "integer"}}, "type": "object"}


# --- fixtures/expectations.toml ------------------------------------------------------------

def test_the_shipped_expectations_load_as_written():
    entries = config.load_expectations(plugin.EXPECTATIONS)
    assert entries and all({"test", "params", "reason"} <= set(e) for e in entries)
    assert entries == plugin._load_expectations()


@pytest.mark.parametrize("text, key, says", [
    ('[[xfail]]\ntest = "t"\nparams = "*"\nreason = "r"\nhost_class = 3\n', "xfail[0].host_class",
     "expected a glob or a list of globs, got 3 (int)"),
    ('[[xfail]]\ntest = "t"\nparams = "*"\nreason = "r"\nhost_class = ["x86-avx2", 3]\n', "xfail[0].host_class",
     "expected a glob or a list of globs"),
    ('[[xfail]]\ntest = "t"\nparams = "*"\n', "xfail[0].reason", "missing required key 'reason'"),
    ('[[xfail]]\ntest = "t"\nparams = "*"\nreason = "r"\nstrcit = false\n', "xfail[0].strcit", "did you mean 'strict'?"),
    ("xfail = 3\n", "xfail", "expected a list, got 3 (int)"),
    ("[[xfail]\n", "-", "not valid TOML"),
])
def test_a_malformed_expectation_names_the_key(tmp_path, text, key, says):
    e = _error(_text(tmp_path, "expectations.toml", text, config.load_expectations))
    assert e.key == key and says in str(e), str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(expectation_docs)
def test_any_expectations_file_gives_entries_or_a_named_error(tmp_path, doc):
    path = tmp_path / "expectations.toml"
    path.write_text(toml(doc), encoding="utf-8")
    try:
        entries = config.load_expectations(path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}: [") and isinstance(e.key, str)
        return
    for e in entries:
        assert all(isinstance(e[k], str) for k in ("test", "params", "reason"))
        assert isinstance(e.get("strict", True), bool)
