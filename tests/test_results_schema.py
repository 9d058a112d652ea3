"""The JSON Schema of results.json (fixtures/schemas/results.schema.json): generated from the
figure-name contract, shipped equal to the generator's output, and it validates what a real run
writes."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from harness.report import schema

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_schema_is_the_generated_one():
    assert schema.SCHEMA_PATH.read_text() == schema.schema_text(), \
        "fixtures/schemas/results.schema.json is stale: run python -m harness.report.schema"
    assert schema.main(["--check"]) == 0


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(json.loads(schema.SCHEMA_PATH.read_text()))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict:
    """A small real run: card checks of one model (params, preprocessing config), strict names."""
    out = tmp_path_factory.mktemp("run")
    env = {**os.environ, "ZOOCONFORM_STRICT_FIGURES": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_card.py", "-k",
         "params_match_published or input_and_preprocessing", "--models", "repvgg_a0", "--report-dir", str(out),
         "-p", "no:cacheprovider", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


def test_a_real_run_validates_and_carries_structured_fields(real_run):
    assert schema.validate(real_run) == []
    tests = real_run["tests"]
    assert tests and all(t["model"] == "repvgg_a0" and t["family"] == "repvgg" and t["suite"] == "test_card"
                         for t in tests)
    params = [t for t in tests if t["check"] == "test_params_match_published"]
    assert params and all(t["row"] and t["row"] in t["nodeid"] for t in params)
    assert all("params_m_measured" in t["figures"] for t in params)


def test_the_schema_refuses_undeclared_names_and_wrong_types(real_run):
    doc = copy.deepcopy(real_run)
    doc["tests"][0]["figures"]["params_m_mesured"] = 1.0
    assert any("params_m_mesured" in p for p in schema.validate(doc))
    doc = copy.deepcopy(real_run)
    doc["tests"][0]["figures"]["params_m_measured"] = "13.2"
    assert any("params_m_measured" in p for p in schema.validate(doc))
    # older names, non-finite floats as strings, a user's x_ figure: valid
    doc = copy.deepcopy(real_run)
    doc["tests"][0]["figures"].update(fp64_noise_floor=1e-6, rel_max_error="inf", x_mine=[1, 2])
    assert schema.validate(doc) == []
