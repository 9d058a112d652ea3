"""The JSON Schema of ``results.json``, generated from the figure-name contract (harness/figures.py).

``fixtures/schemas/results.schema.json`` is this module's output; a test keeps the two equal, so
the shipped schema never drifts from the contract. Regenerate after declaring a figure::

    python -m harness.report.schema          # writes fixtures/schemas/results.schema.json
    python -m harness.report.schema --check  # exit 1 when the shipped file is stale
    python -m harness.report.schema --validate reports/results.json  # a run's document (CI)

Strict where the contract is: every figure name must be declared (or be an older name, marked
deprecated, or an ``x_`` name) and have its declared JSON type. The run-level sections
(machine, versions, settings) and a test record's other fields may grow.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .. import figures as contract
from ..phases import PHASES

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "fixtures" / "schemas" / "results.schema.json"
SCHEMA_TAG = "zooconform.results/1"
OUTCOMES = ["passed", "failed", "error", "skipped", "xfailed", "xpassed", "inconclusive", "not applicable", None]

_NONFINITE = {"enum": ["inf", "-inf", "nan"]}
_TYPES: dict[str, dict[str, Any]] = {
    "num": {"anyOf": [{"type": ["number", "null"]}, _NONFINITE]},
    "int": {"type": ["integer", "null"]},
    "text": {"type": ["string", "null"]},
    "bool": {"type": ["boolean", "null"]},
    "list": {"type": ["array", "null"]},
    "dict": {"type": ["object", "null"]},
    "any": {},
}
_FIELD_TYPES = {"batch": {"type": "integer"}}


def _figure_schema(typ: str, unit: str, meaning: str, feeds: str | None = None) -> dict[str, Any]:
    out = dict(_TYPES[typ])
    out["description"] = meaning + (f" [{unit}]" if unit else "")
    if feeds:
        out["x-feeds"] = feeds  # the report role (harness/figures.py ROLES)
    return out


def results_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, f in contract.FIGURES.items():
        props[name] = _figure_schema(f.type, f.unit, f.meaning, f.feeds)
    for old, new in contract.ALIASES.items():
        f = contract.FIGURES[new]
        props[old] = {**_TYPES[f.type], "description": f"older name of {new}", "deprecated": True}
    figures = {
        "type": "object",
        "description": "what the test measured, by name (harness/figures.py)",
        "properties": dict(sorted(props.items())),
        "patternProperties": {f"^(?:{fam.pattern})$": _figure_schema(fam.type, fam.unit, fam.meaning)
                              for fam in contract.FAMILIES},
        "additionalProperties": False,
    }
    fields = {k: {**_FIELD_TYPES.get(k, {"type": "string"}), "description": v} for k, v in contract.TEST_FIELDS.items()}
    test = {
        "type": "object",
        "required": ["nodeid", "outcome", "duration_s", "figures"],
        "properties": {
            "nodeid": {"type": "string"},
            "outcome": {"enum": OUTCOMES, "description": "the worst phase's outcome; null: never reported (killed)"},
            "duration_s": {"type": "number", "minimum": 0},
            "figures": {"$ref": "#/$defs/figures"},
            **fields,
            "message": {"type": "string", "description": "the check's one-line message (failed, skipped, ...)"},
            "failing": {"type": "boolean", "description": "a non-failed outcome that makes the run red"},
            "repro": {"type": "string", "description": "the repro bundle's folder, relative to results.json"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://zooconform/schemas/results.schema.json",
        "title": "zooconform results.json",
        "description": "One run of the conformance suites. Generated from harness/figures.py by "
                       "harness/report/schema.py; do not edit by hand.",
        "type": "object",
        "required": ["schema", "complete", "exitstatus", "started_utc", "machine", "versions", "settings", "counts",
                     "tests"],
        "properties": {
            "schema": {"const": SCHEMA_TAG},
            "complete": {"type": "boolean", "description": "false: the run was interrupted (a snapshot)"},
            "exitstatus": {"type": ["integer", "null"]},
            "started_utc": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
            "wall_s": {"type": "number"},
            "machine": {"type": "object", "properties": {
                "hostname": {"type": "string"}, "cpu": {"type": "string"}, "cores": {"type": ["integer", "null"]},
                "gpu": {"type": ["string", "null"]}, "host_class": {"type": ["string", "null"]}}},
            "versions": {"type": "object", "additionalProperties": {"type": "string"}},
            "settings": {"type": "object"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "notes": {"type": "array", "items": {"type": "string"}},
            "phases": {
                "type": "object",
                "description": "where the time went (harness/phases.py): self seconds per model and phase, "
                               "and tests_s / essential_s as the suite's overhead ratio",
                "properties": {
                    "by_model": {"type": "object", "additionalProperties": {
                        "type": "object", "propertyNames": {"enum": sorted(PHASES)},
                        "additionalProperties": {"type": "number", "minimum": 0}}},
                    "totals": {"type": "object", "propertyNames": {"enum": sorted(PHASES)},
                               "additionalProperties": {"type": "number", "minimum": 0}},
                    "essential_s": {"type": "number", "minimum": 0},
                    "accounted_s": {"type": "number", "minimum": 0},
                    "essential_phases": {"type": "array", "items": {"enum": sorted(PHASES)}},
                    "tests_s": {"type": "number", "minimum": 0},
                    "unattributed_s": {"type": "number", "minimum": 0},
                    "overhead_ratio": {"type": ["number", "null"], "minimum": 0},
                    "memory": {"type": "object", "description": "per model, the highest peak resident memory "
                               "(MB) of its process that one of its phases set, and that phase; and each "
                               "phase's high-water (MB held by the process while it ran)",
                               "additionalProperties": {
                                   "type": "object", "additionalProperties": False,
                                   "dependentRequired": {"peak_mb": ["phase"], "phase": ["peak_mb"]},
                                   "properties": {"peak_mb": {"type": "number", "minimum": 0},
                                                  "phase": {"enum": sorted(PHASES)},
                                                  "phases": {"type": "object", "propertyNames": {"enum": sorted(PHASES)},
                                                             "additionalProperties": {"type": "number",
                                                                                      "minimum": 0}}}}},
                },
                "additionalProperties": False,
            },
            "tests": {"type": "array", "items": {"$ref": "#/$defs/test"}},
        },
        "$defs": {"test": test, "figures": figures},
    }


def schema_text() -> str:
    return json.dumps(results_schema(), indent=1, sort_keys=False) + "\n"


def validate(doc: dict[str, Any]) -> list[str]:
    """The ways ``doc`` breaks the shipped schema, one line each (needs the jsonschema package)."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--validate"]:
        bad = 0
        for path in args[1:]:
            problems = validate(json.loads(Path(path).read_text()))
            for line in problems[:50]:
                print(f"{path}: {line}", file=sys.stderr)
            bad += bool(problems)
            if not problems:
                print(f"{path}: valid")
        return 1 if bad else 0
    text = schema_text()
    if "--check" in args:
        if not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run python -m harness.report.schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
