"""The JSON Schemas of the user-facing configs (fixtures/schemas/{manifest,preprocess,budgets}.schema.json):
shipped equal to generated (harness/config_schemas.py), valid Draft 2020-12, and they accept the
shipped examples and refuse what the loaders refuse."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import tomllib

from harness import config_schemas

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((config_schemas.SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schemas_equal_the_generated_ones():
    assert config_schemas.stale() == [], "run: python -m harness.config_schemas"


def test_the_shipped_configs_validate():
    pre = _validator("preprocess.schema.json")
    for path in sorted((FIXTURES / "deploy_preprocess").glob("*.json")):
        pre.validate(json.loads(path.read_text(encoding="utf-8")))
    _validator("manifest.schema.json").validate(
        tomllib.loads((FIXTURES / "deploy_preprocess" / "example_manifest.toml").read_text(encoding="utf-8")))
    budgets = _validator("budgets.schema.json")
    for path in sorted((FIXTURES / "budgets").glob("*.toml")):
        budgets.validate(tomllib.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("change", [
    {"interpolation": "lanczos"},             # not one of the choices
    {"crop": 0},                              # a side < 1
    {"mean": [1, 2]},                         # not 3 numbers
    {"resize": 256},                          # the other pipeline's geometry key
    {"colour": "RGB"},                        # unknown key
])
def test_the_preprocess_schema_refuses_what_the_loader_refuses(change):
    from harness.errors import ConfigError
    from harness.preprocess import deploy

    good = json.loads((FIXTURES / "deploy_preprocess" / "ecenter224_bicubic.json").read_text(encoding="utf-8"))
    bad = {**good, **change}
    assert list(_validator("preprocess.schema.json").iter_errors(bad))
    with pytest.raises(ConfigError):
        deploy.from_dict(bad)


def test_the_manifest_and_budget_schemas_refuse_unknown_models_and_keys():
    man = _validator("manifest.schema.json")
    assert list(man.iter_errors({"models": {"resnet50": {"onnx": "a.onnx"}}}))
    assert list(man.iter_errors({"models": {"resnest50": {"onxx": "a.onnx"}}}))
    budgets = _validator("budgets.schema.json")
    assert list(budgets.iter_errors({"profile": {"threads": 2}, "models": {"resnest50": {"fp32": {"batch1": 3.0}}}}))
