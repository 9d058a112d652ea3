"""Runtimes as plug-ins (``harness/runtimes/base.py`` is the protocol).

``REGISTRY``: one line per runtime, ``name -> "module:object"``, imported only when asked for
(a runtime whose package is missing costs nothing until selected, and then says why).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from .base import Runtime, RuntimeUnavailable, Session, describe

REGISTRY: dict[str, str] = {
    "ort": "harness.runtimes.ort:CPU",
    "ort-cuda": "harness.runtimes.ort:CUDA",
    "ort-trt": "harness.runtimes.ort:TENSORRT",
    "openvino": "harness.runtimes.openvino:RUNTIME",
    "torch": "harness.runtimes.torch:EAGER",
    "torch-compile": "harness.runtimes.torch:COMPILED",
    "files": "harness.runtimes.files:RUNTIME",
}
DEFAULT = "ort"
_overrides: dict[str, Runtime] = {}  # self-tests register wrappers here


def names() -> list[str]:
    return list(REGISTRY) + [n for n in _overrides if n not in REGISTRY]


def get(name: str) -> Runtime:
    """The runtime object registered as ``name``; unknown names raise ValueError listing the known ones."""
    if name in _overrides:
        return _overrides[name]
    if name not in REGISTRY:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(names())}")
    module, _, obj = REGISTRY[name].partition(":")
    found: Runtime = getattr(import_module(module), obj)
    return found


def register(rt: Runtime) -> None:
    """Register a runtime object under its ``name`` (self-tests plant faulty wrappers this way)."""
    _overrides[rt.name] = rt


def unregister(name: str) -> None:
    _overrides.pop(name, None)


def is_builtin(name: str) -> bool:
    """``name`` is the shipped runtime, not a wrapper a self-test registered under it (what a
    cache may key on: a planted fault must never be served the real runtime's outputs)."""
    return name in REGISTRY and name not in _overrides


@dataclass(frozen=True)
class Spec:
    """One ``--runtime`` entry: a runtime name and the arithmetic asked of it (``openvino:bf16``;
    plain ``openvino`` asks for fp32; ``openvino:default`` leaves the choice to the runtime)."""

    name: str
    precision: str = "fp32"

    @property
    def id(self) -> str:
        return self.name if self.precision == "fp32" else f"{self.name}:{self.precision}"

    @property
    def runtime(self) -> Runtime:
        return get(self.name)

    def available(self) -> tuple[bool, str]:
        rt = self.runtime
        ok, why = rt.available()
        if ok and self.precision != "fp32":
            ok, why = rt.supports(self.precision)
        return ok, why

    def supports(self, precision: str, batch: int | None = None) -> tuple[bool, str]:
        return self.runtime.supports(precision, batch)

    def prepare(self, path: Any, threads: int | None = None, *, model: Any = None, file_precision: str = "fp32",
                **options: Any) -> Session:
        """A session for ``path``: an fp32 file gets this spec's arithmetic, an int8 file "int8".
        ``options`` are runtime-specific settings (ORT's ``spinning=False``, ``optimization``);
        those the runtime's ``prepare`` does not take are dropped."""
        import inspect

        rt = self.runtime
        precision = "int8" if file_precision == "int8" else self.precision
        if options:
            params = inspect.signature(rt.prepare).parameters
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                options = {k: v for k, v in options.items() if k in params}
        return rt.prepare(path, threads, precision, model=model, **options)

    @property
    def on_cpu(self) -> bool:
        """Whether it computes on this host's CPU (threads and the CPU peak mean something)."""
        return getattr(self.runtime, "device", "CPU") == "CPU"

    def __str__(self) -> str:
        return self.id


def spec(value: str | Spec | None) -> Spec:
    if isinstance(value, Spec):
        return value
    name, _, precision = (value or DEFAULT).partition(":")
    if name not in REGISTRY and name not in _overrides:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(names())}")
    return Spec(name, precision or "fp32")


def parse(option: str | None) -> list[Spec]:
    """``--runtime ort,openvino:bf16`` -> [Spec("ort"), Spec("openvino", "bf16")] (validated, order
    kept, duplicates dropped)."""
    out: list[Spec] = []
    for n in (option or DEFAULT).split(","):
        n = n.strip()
        if not n:
            continue
        try:
            s = spec(n)
        except ValueError as e:
            raise ValueError(f"--runtime: {e}") from None
        if s not in out:
            out.append(s)
    return out or [Spec(DEFAULT)]


def require(name: str, precision: str = "fp32", batch: int | None = None) -> Runtime:
    """The runtime, or RuntimeUnavailable saying why it cannot run (absent, or not this precision)."""
    rt = get(name)
    ok, why = rt.available()
    if not ok:
        raise RuntimeUnavailable(f"runtime {name}: {why}")
    ok, why = rt.supports(precision, batch)
    if not ok:
        raise RuntimeUnavailable(f"runtime {name}: {why}")
    return rt


__all__ = ["REGISTRY", "DEFAULT", "Runtime", "RuntimeUnavailable", "Session", "Spec", "describe", "get", "names",
           "parse", "spec",
           "register", "require", "unregister"]
