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

import tomllib

from .errors import ConfigError

TOLERANCES = Path(__file__).resolve().parent.parent / "fixtures" / "tolerances.toml"
BY_HOST_CLASS = "by_host_class"


def _check_entry(path: Path, key: str, e: object) -> None:
    if not (isinstance(e, dict) and isinstance(e.get("value"), (int, float)) and not isinstance(e.get("value"), bool)
            and isinstance(e.get("why"), str)):
        raise ConfigError(path, key, f"expected {{ value = <number>, why = \"...\" }}, got {e!r}",
                          fix="every tolerance needs a number and the measurement behind it")


def _load(path: Path) -> dict:
    """The file, parsed and validated on each call (~4 ms for fixtures/tolerances.toml): no
    module-level cache, and an edited file is read as it is now."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "-", "tolerance file not found", fix="restore fixtures/tolerances.toml") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "-", f"not valid TOML: {err}", fix="fix the TOML syntax") from None
    for section, entries in data.items():
        if not isinstance(entries, dict):
            raise ConfigError(path, section, "expected a table of tolerances", fix=f"write [{section}]")
        for name, e in entries.items():
            if name == BY_HOST_CLASS:
                if not isinstance(e, dict):
                    raise ConfigError(path, f"{section}.{name}", "expected tables [section.by_host_class.\"<class>\"]")
                for cls, overrides in e.items():
                    if not isinstance(overrides, dict):
                        raise ConfigError(path, f"{section}.{name}.{cls}", "expected a table of tolerances")
                    for oname, oe in overrides.items():
                        if oname not in entries:
                            raise ConfigError(path, f"{section}.{name}.{cls}.{oname}",
                                              f"overrides no [{section}] tolerance '{oname}'",
                                              fix=f"define [{section}] {oname} first (the default for every host class)")
                        _check_entry(path, f"{section}.{name}.\"{cls}\".{oname}", oe)
                continue
            _check_entry(path, f"{section}.{name}", e)
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
