"""Fuzzing the loaders of what users and earlier runs write (issue 21): the artifacts manifest,
deploy preprocessing JSON, latency budget profiles, fixtures/expectations.toml and history
lines. Any input gives a valid config or a named error (ConfigError / InputError naming the
file and key), never a traceback; a history line is read or skipped with a reason, never
raised on."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import manifest, plugin
from harness.errors import ConfigError, ZooconformError
from harness.latency import budgets
from harness.preprocess import deploy as deploy_preprocess
from harness.report import history as hist
from harness.report.plots import _series
from harness.report.regress import same_machine

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.booleans() | st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))


def values(keys=st.text(max_size=8)):
    return st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=3),
                        max_leaves=8)


def toml_value(v) -> str:
    """A tiny TOML writer (inline tables and arrays) for generated structures."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml(doc: dict) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --- the artifacts manifest ----------------------------------------------------------------

IDS = ["repvgg_a0", "hrnet_w18_small_v1"]
manifest_docs = st.dictionaries(
    st.sampled_from(["models", "model", "x"]),
    st.dictionaries(st.sampled_from(IDS + ["nope"]),
                    st.dictionaries(st.sampled_from(list(manifest.KEYS) + ["onxx"]),
                                    st.text(max_size=20) | values()) | values(),
                    max_size=3) | values(),
    max_size=2)


@FUZZ
@given(manifest_docs)
def test_manifest_gives_a_manifest_or_a_named_error(doc):
    try:
        m = manifest.loads(toml(doc), "/fuzz/m.toml", IDS)
    except ConfigError as e:
        assert str(e).startswith("/fuzz/m.toml: [") and isinstance(e.key, str)
        return
    for mid, arts in m.models.items():
        assert mid in IDS and all(isinstance(p, Path) for p in arts.paths.values())


@FUZZ
@given(st.text(max_size=200))
def test_manifest_text_gives_a_manifest_or_a_named_error(text):
    try:
        manifest.loads(text, "/fuzz/m.toml", IDS)
    except ConfigError:
        pass


def test_a_manifest_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "m.toml").write_bytes(b"[models.repvgg_a0]\nonnx = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        manifest.load(tmp_path / "m.toml", IDS)
    with pytest.raises(ConfigError, match="is a directory"):
        manifest.load(tmp_path, IDS)


# --- deploy preprocessing JSON -------------------------------------------------------------

GOOD = {"pipeline": "resize_then_crop", "resize": 256, "crop": 224, "interpolation": "bilinear", "color": "RGB",
        "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)
preprocess_docs = st.builds(
    lambda base, changes, drop: {**{k: v for k, v in base.items() if k not in drop}, **changes},
    st.just(GOOD),
    st.dictionaries(st.sampled_from(list(deploy_preprocess.KEYS) + ["size"]),
                    json_values | st.integers(min_value=-10, max_value=10 ** 7), max_size=3),
    st.sets(st.sampled_from(list(GOOD)), max_size=2)) | json_values


@FUZZ
@given(preprocess_docs)
def test_preprocess_config_gives_a_config_or_a_named_error(doc):
    try:
        cfg = deploy_preprocess.from_dict(doc, "pre.json")
    except ConfigError as e:
        assert str(e).startswith("pre.json: [") and isinstance(e.key, str)
        return
    assert 1 <= cfg.crop <= deploy_preprocess.MAX_SIDE
    assert cfg.resize is None or 1 <= cfg.resize <= deploy_preprocess.MAX_SIDE


# --- latency budget profiles ---------------------------------------------------------------

profile_docs = st.fixed_dictionaries(
    {"profile": st.dictionaries(st.sampled_from(list(budgets.PROFILE_KEYS) + ["gpu"]),
                                st.sampled_from(list(budgets.PROVIDERS)) | values(st.sampled_from(
                                    list(budgets.MATCH_KEYS) + ["x"])), max_size=5)},
    optional={"models": st.dictionaries(st.sampled_from(["repvgg_a0", "resnet50"]),
                                        st.dictionaries(st.sampled_from(list(budgets.MODEL_KEYS) + ["int4"]),
                                                        values(st.sampled_from(["b1", "b8", "b0", "x"])), max_size=3)
                                        | values(), max_size=2),
              "extra": values()})


@FUZZ
@given(profile_docs)
def test_budget_profile_gives_a_profile_or_a_named_error(folder, doc):
    path = folder / "fuzz.toml"
    path.write_text(toml(doc), encoding="utf-8")
    try:
        prof = budgets.load_profile(path, ["repvgg_a0"])
    except ConfigError as e:
        assert str(e).startswith(f"{path}: [") and isinstance(e.key, str)
        return
    assert prof.provider in budgets.PROVIDERS


# --- fixtures/expectations.toml ------------------------------------------------------------

expectation_docs = st.dictionaries(
    st.sampled_from(["xfail", "other"]),
    st.lists(st.dictionaries(st.sampled_from(["test", "params", "reason", "host_class", "suite_artifacts_only",
                                              "strict"]), st.text(max_size=8) | values(), max_size=6),
             max_size=3) | values(),
    max_size=2)


@FUZZ
@given(expectation_docs)
def test_expectations_give_entries_or_a_named_error(folder, doc):
    path = folder / "expectations.toml"
    path.write_text(toml(doc), encoding="utf-8")
    old = plugin.EXPECTATIONS
    plugin.EXPECTATIONS = path
    try:
        entries = plugin._load_expectations()
    except ConfigError as e:
        assert str(e).startswith(f"{path}: [") and isinstance(e.key, str)
        return
    finally:
        plugin.EXPECTATIONS = old
    for e in entries:
        assert all(isinstance(e[k], str) for k in ("test", "params", "reason"))
        assert isinstance(e.get("strict", True), bool)


# --- history lines -------------------------------------------------------------------------

FIELDS = ["schema", "model", "run_id", "started_utc", "complete", "machine", "metrics", "failing",
          "passed_digests", "threads", "profile", "data", "counts", "versions"]
history_lines = (st.binary(max_size=60)
                 | st.dictionaries(st.sampled_from(FIELDS), values(st.sampled_from(
                     ["value", "kind", "n", "cv", "label", "fp32.b1", "cpu", "host_class"])), max_size=8)
                 .map(lambda d: json.dumps(d).encode())
                 | st.fixed_dictionaries({"model": st.just("repvgg_a0"), "run_id": st.text(min_size=1, max_size=5)},
                                         optional={k: values() for k in FIELDS[3:]})
                 .map(lambda d: json.dumps(d).encode()))


@FUZZ
@given(st.lists(history_lines, max_size=6))
def test_history_lines_are_read_or_skipped_with_a_reason(folder, lines):
    path = folder / "history.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    h = hist.read_history(path)
    assert set(h.bad_reasons) == set(h.bad_lines)
    assert len(h.records) + len(h.bad_lines) == sum(1 for line in lines if line.replace(b"\n", b" ").strip())
    h.runs()
    h.bad_note()
    now = {"model": "repvgg_a0", "machine": {"cpu": "x"}, "threads": 2}
    for r in h.records:
        same_machine(now, r)
    prev = hist.previous_record(h, "repvgg_a0", "now", "2026-11-22T01:00:00Z")
    _series(h.records + ([prev] if prev else []), "latency")
    for r in h.records:  # and every record kept is one a reader can use
        assert hist.record_problem(r) is None


def test_errors_are_zooconform_errors():
    assert issubclass(ConfigError, ZooconformError)
