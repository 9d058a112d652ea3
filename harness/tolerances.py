"""Tolerances from ``fixtures/tolerances.toml``: every value carries the measurement behind it.

Entry shape::

    [section]
    name = { value = 0.001, why = "what was measured, with which command" }
"""
from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError

TOLERANCES = Path(__file__).resolve().parent.parent / "fixtures" / "tolerances.toml"


@lru_cache(maxsize=None)
def _load(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "-", "tolerance file not found", fix="restore fixtures/tolerances.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "-", f"not valid TOML: {e}", fix="fix the TOML syntax") from None
    for section, entries in data.items():
        if not isinstance(entries, dict):
            raise ConfigError(path, section, "expected a table of tolerances", fix=f"write [{section}]")
        for name, e in entries.items():
            if not (isinstance(e, dict) and isinstance(e.get("value"), (int, float)) and not isinstance(e.get("value"), bool)
                    and isinstance(e.get("why"), str)):
                raise ConfigError(path, f"{section}.{name}",
                                  f"expected {{ value = <number>, why = \"...\" }}, got {e!r}",
                                  fix="every tolerance needs a number and the measurement behind it")
    return data


def tolerance(section: str, name: str, path: Path = TOLERANCES) -> float:
    data = _load(path)
    try:
        return float(data[section][name]["value"])
    except KeyError:
        raise ConfigError(path, f"{section}.{name}", "tolerance not defined", fix=f"add [{section}] {name} = {{ value = ..., why = ... }}") from None


def why(section: str, name: str, path: Path = TOLERANCES) -> str:
    return _load(path)[section][name]["why"]
