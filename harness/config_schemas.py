"""JSON Schemas of the user-facing config files, generated from their pydantic models.

``fixtures/schemas/manifest.schema.json`` (the ``--artifacts`` TOML), ``preprocess.schema.json``
(a deploy-side preprocessing config, harness/preprocess/deploy.py) and ``budgets.schema.json``
(a latency budget profile, harness/latency/budgets.py) are this module's output, for editors to
complete and check those files (TOML through taplo / Even Better TOML, JSON natively). The
loaders validate with the same models (harness/config.py); what a model cannot state as a type
(the registry's model ids, the pipeline's geometry key) is added here or by the model. A test
keeps the shipped files equal to these::

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
from .config import json_schema
from .latency import budgets
from .preprocess import deploy
from .zoo import load_zoo

SCHEMAS = Path(__file__).resolve().parent.parent / "fixtures" / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _published(name: str, title: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": DRAFT, "$id": f"zooconform/{name}", "title": title, **schema}


def _registry_ids(models: dict[str, Any]) -> None:
    """``[models.<id>]``: only the registry's ids (the loaders check them against fixtures/zoo)."""
    models["propertyNames"] = {"enum": sorted(load_zoo())}


def manifest_schema() -> dict[str, Any]:
    schema = json_schema(manifest.File)
    _registry_ids(schema["properties"]["models"])
    return _published("manifest.schema.json", "zooconform artifacts manifest (--artifacts FILE.toml)", schema)


def preprocess_schema() -> dict[str, Any]:
    return _published("preprocess.schema.json",
                      "zooconform deploy-side preprocessing config (manifest preprocess = FILE.json)",
                      json_schema(deploy.File))


def budgets_schema() -> dict[str, Any]:
    schema = json_schema(budgets.File)
    _registry_ids(schema["properties"]["models"])
    return _published("budgets.schema.json", "zooconform latency budget profile (fixtures/budgets/<profile>.toml)", schema)


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
