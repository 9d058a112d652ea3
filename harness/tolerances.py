"""Tolerances from ``fixtures/tolerances.toml``: every value carries the measurement behind it.

Entry shape::

    [section]
    name = { value = 0.001, why = "what was measured, with which command" }

A figure that depends on the host's kernels (a latency ratio) may be set per host class
(``harness/host.py``: ``x86-avx2``, ``x86-avx512-vnni``, ...); the section's own entry is the
default for every class without one::

    [section.by_host_class."x86-avx2"]
    name = { value = 1.15, why = "measured on an x86-avx2 host: ..." }

:func:`limit` says which entry applied, so a message can name it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tomllib
from pydantic import ConfigDict, RootModel, model_validator

from .config import Expect, Strict, problem, validate
from .errors import ConfigError

TOLERANCES = Path(__file__).resolve().parent.parent / "fixtures" / "tolerances.toml"
BY_HOST_CLASS = "by_host_class"
SHAPE = '[section] name = { value = <number>, why = "..." } (harness/tolerances.py)'


class Entry(Strict):
    value: float
    why: str


# anything else than the shape is reported as the shape, with the value found
_Entry = Annotated[Entry, Expect('{ value = <number>, why = "..." }',
                                 fix="every tolerance needs a number and the measurement behind it")]


class Section(Strict):
    """``[section]``: its tolerances, and per host class overrides of them."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, _Entry]  # the section's own tolerances
    by_host_class: dict[str, dict[str, _Entry]] = {}


class File(RootModel[dict[str, Section]]):
    model_config = ConfigDict(strict=True, frozen=True)

    @model_validator(mode="after")
    def _overrides_have_a_default(self) -> File:
        for section, entries in self.root.items():
            for cls, overrides in entries.by_host_class.items():
                for name in overrides:
                    if name not in (entries.model_extra or {}):
                        raise problem(f"overrides no [{section}] tolerance '{name}'",
                                      fix=f"define [{section}] {name} first (the default for every host class)",
                                      key=f'{section}.{BY_HOST_CLASS}."{cls}".{name}')
        return self


def _load(path: Path) -> dict[str, Any]:
    """The file, parsed and validated on each call: no module-level cache, and an edited file is
    read as it is now."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "-", "tolerance file not found", fix="restore fixtures/tolerances.toml") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "-", f"not valid TOML: {err}", fix="fix the TOML syntax") from None
    validate(File, data, path, shape=SHAPE)
    return data


def tolerance(section: str, name: str, path: Path = TOLERANCES) -> float:
    data = _load(path)
    try:
        return float(data[section][name]["value"])
    except KeyError:
        raise ConfigError(path, f"{section}.{name}", "tolerance not defined",
                          fix=f"add [{section}] {name} = {{ value = ..., why = ... }}") from None


def why(section: str, name: str, path: Path = TOLERANCES) -> str:
    return _load(path)[section][name]["why"]


@dataclass(frozen=True)
class Limit:
    """A tolerance as it applies on one host class."""

    value: float
    why: str
    key: str          # where it is written: ``[latency.by_host_class."x86-avx2"] name`` or ``[latency] name``
    host_class: str | None
    per_class: bool   # True: the class's own entry; False: the section's default

    def names(self) -> str:
        """``limit of host class x86-avx2`` / ``default limit (no entry for host class x86-avx512-vnni)``."""
        if self.per_class:
            return f"limit of host class {self.host_class}"
        if self.host_class:
            return f"default limit (no entry for host class {self.host_class})"
        return "default limit (host class unknown)"


def limit(section: str, name: str, host_class: str | None, path: Path = TOLERANCES) -> Limit:
    """``[section] name``, or its ``[section.by_host_class."<host_class>"]`` override."""
    data = _load(path)
    default = tolerance(section, name, path)
    over = ((data.get(section) or {}).get(BY_HOST_CLASS) or {}).get(host_class or "", {}).get(name)
    if over is not None:
        return Limit(float(over["value"]), over["why"], f'[{section}.{BY_HOST_CLASS}."{host_class}"] {name}',
                     host_class, True)
    return Limit(default, why(section, name, path), f"[{section}] {name}", host_class, False)


def host_classes(section: str, path: Path = TOLERANCES) -> list[str]:
    """Host classes with their own entries in ``section``."""
    return list((_load(path).get(section) or {}).get(BY_HOST_CLASS) or {})
