"""JSON Schemas of the user-facing config files, generated from their validators' tables.

``fixtures/schemas/manifest.schema.json`` (the ``--artifacts`` TOML), ``preprocess.schema.json``
(a deploy-side preprocessing config, harness/preprocess/deploy.py) and ``budgets.schema.json``
(a latency budget profile, harness/latency/budgets.py) are this module's output, for editors to
complete and check those files (TOML through taplo / Even Better TOML, JSON natively). The
loaders stay the authority (their messages name file, key, expected and got); the schemas are
built from the same key tables, and a test keeps the shipped files equal to these::

    python -m harness.config_schemas          # writes fixtures/schemas/{manifest,preprocess,budgets}.schema.json
    python -m harness.config_schemas --check  # exit 1 when a shipped schema is stale
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import manifest
from .latency import budgets
from .preprocess import deploy
from .zoo import load_zoo

SCHEMAS = Path(__file__).resolve().parent.parent / "fixtures" / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

_JSON_TYPE = {str: "string", int: "integer", bool: "boolean", float: "number", dict: "object"}


def _json_type(py: type | tuple) -> dict[str, Any]:
    if isinstance(py, tuple):
        return {"type": "number"} if set(py) <= {int, float} else {"type": sorted({_JSON_TYPE[t] for t in py})}
    return {"type": _JSON_TYPE[py]}


def manifest_schema() -> dict[str, Any]:
    paths = {"checkpoint": "reference weights (.pth or .safetensors)", "onnx": "the fp32 ONNX under test",
             "int8_onnx": "the quantized ONNX under test", "preprocess": "a deploy-side preprocessing config (JSON)",
             "deploy_checkpoint": "a RepVGG deploy-form state dict under test"}
    entry = {"type": "object", "additionalProperties": False,
             "properties": {k: {"type": "string", "minLength": 1,
                                "description": f"{paths.get(k, k)}; relative paths resolve against the manifest's folder"}
                            for k in manifest.KEYS}}
    return {"$schema": DRAFT, "$id": "zooconform/manifest.schema.json",
            "title": "zooconform artifacts manifest (--artifacts FILE.toml)",
            "type": "object", "additionalProperties": False,
            "properties": {"models": {"type": "object", "description": "[models.<id>]: the files of one model",
                                      "propertyNames": {"enum": sorted(load_zoo())},
                                      "additionalProperties": entry}}}


def preprocess_schema() -> dict[str, Any]:
    triple = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
    props: dict[str, Any] = {
        "pipeline": {"enum": list(deploy.PIPELINES)},
        "crop": {"type": "integer", "minimum": 1, "maximum": deploy.MAX_SIDE, "description": "output side (pixels)"},
        "interpolation": {"enum": list(deploy.INTERPOLATIONS)},
        "color": {"enum": list(deploy.COLORS)},
        "mean": {**triple, "description": "per channel, 0-255 pixel units"},
        "std": {**triple, "items": {"type": "number", "exclusiveMinimum": 0}, "description": "per channel, 0-255 pixel units"},
        "resize": {"type": "integer", "minimum": 1, "maximum": deploy.MAX_SIDE,
                   "description": "short side before the crop (pipeline resize_then_crop)"},
        "crop_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                          "description": "share of the short side kept (pipeline crop_then_resize), e.g. 0.875"},
        "crop_offset_rounding": {"enum": list(deploy.ROUNDINGS), "default": "half_even"},
        "note": {"type": "string"},
    }
    assert set(props) == set(deploy.KEYS), "a deploy-config key without a schema"
    geometry = []
    for pipeline, key in deploy.GEOMETRY_KEY.items():
        others = [k for k in deploy.GEOMETRY_KEY.values() if k != key]
        geometry.append({"if": {"properties": {"pipeline": {"const": pipeline}}, "required": ["pipeline"]},
                         "then": {"required": [key], "not": {"anyOf": [{"required": [o]} for o in others]}}})
    return {"$schema": DRAFT, "$id": "zooconform/preprocess.schema.json",
            "title": "zooconform deploy-side preprocessing config (manifest preprocess = FILE.json)",
            "type": "object", "additionalProperties": False, "required": list(deploy.REQUIRED),
            "properties": props, "allOf": geometry}


def budgets_schema() -> dict[str, Any]:
    match = {"type": "object", "additionalProperties": False,
             "properties": {k: _json_type(t) for k, t in budgets.MATCH_KEYS.items()}}
    profile_props = {k: (match if k == "match" else _json_type(t)) for k, t in budgets.PROFILE_KEYS.items()}
    profile_props["provider"] = {"enum": list(budgets.PROVIDERS)}
    profile_props["threads"] = {"type": "integer", "minimum": 1}
    ms = {"type": "object", "additionalProperties": False, "description": "milliseconds per call, by batch: b1, b4, ...",
          "patternProperties": {budgets._BATCH_KEY.pattern: {"type": "number", "exclusiveMinimum": 0}}}
    model: dict[str, Any] = {"type": "object", "additionalProperties": False,
             "properties": {**{p: ms for p in budgets.PRECISIONS},
                            "throughput_ips": {"type": "number", "exclusiveMinimum": 0}, "note": {"type": "string"}}}
    assert set(model["properties"]) == set(budgets.MODEL_KEYS), "a budget model key without a schema"
    return {"$schema": DRAFT, "$id": "zooconform/budgets.schema.json",
            "title": "zooconform latency budget profile (fixtures/budgets/<profile>.toml)",
            "type": "object", "additionalProperties": False, "required": ["profile"],
            "properties": {"profile": {"type": "object", "additionalProperties": False, "properties": profile_props},
                           "models": {"type": "object", "propertyNames": {"enum": sorted(load_zoo())},
                                      "additionalProperties": model}}}


GENERATORS: dict[str, Callable[[], dict[str, Any]]] = {
    "manifest.schema.json": manifest_schema, "preprocess.schema.json": preprocess_schema,
    "budgets.schema.json": budgets_schema}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=False) + "\n"


def stale(folder: Path = SCHEMAS) -> list[str]:
    """The shipped schema files that differ from what the generators write now."""
    return [name for name, gen in GENERATORS.items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != render(gen())]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        bad = stale()
        for name in bad:
            print(f"{SCHEMAS / name} is stale: run python -m harness.config_schemas", file=sys.stderr)
        return 1 if bad else 0
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    for name, gen in GENERATORS.items():
        (SCHEMAS / name).write_text(render(gen()), encoding="utf-8")
        print(SCHEMAS / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
