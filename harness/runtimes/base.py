"""The runtime protocol, modelled on onnx's ``Backend`` (``onnx.backend.base``).

A runtime is one module in ``harness/runtimes/`` with one object that has

- ``name``: what ``--runtime`` calls it, test ids and results.json records carry it;
- ``available() -> (bool, reason)``: whether it can run here (package installed, device
  present); the reason is the skip message when it cannot;
- ``supports(precision, batch) -> (bool, reason)``: whether it runs a file of that precision
  ("fp32", "int8" for a QDQ/QOperator file) at that batch size (None: any);
- ``prepare(onnx_path, threads, precision, *, model=None) -> Session``: a session for a file
  (``precision``: the arithmetic asked for, "fp32" unless the check says otherwise;
  ``model``: the torch module the file was exported from, for runtimes that run the module);
- ``exposes_intermediates``: whether its layer outputs can be read (ORT: graph outputs added;
  torch: module hooks), so a difference is located to a layer;
- ``runs_module``: True when it runs the torch module (``model=``), not the file.

A :class:`Session` has ``run(batch) -> logits`` (float32 NCHW in, the first output out) and
``effective_precision``: the arithmetic the runtime reports it actually uses after
compiling, not the one asked for (OpenVINO ignores a bf16 hint on a CPU without bf16), and
``settings``: one line that messages quote ("openvino CPU, f32, 2 threads").

Every ``prepare`` runs the file through :func:`harness.onnxfile.check_external_data` first:
external data that escapes the file's folder is refused on every path, whatever the runtime.

Adding a runtime is one module with such an object plus one line in
``harness/runtimes/__init__.py``'s ``REGISTRY``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

FP32_PRECISIONS = ("fp32", "f32")


@runtime_checkable
class Session(Protocol):
    runtime: str
    effective_precision: str
    settings: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def run_batched(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray: ...


@runtime_checkable
class Runtime(Protocol):
    name: str
    exposes_intermediates: bool
    runs_module: bool

    def available(self) -> tuple[bool, str]: ...

    def supports(self, precision: str, batch: int | None = None) -> tuple[bool, str]: ...

    def prepare(self, onnx_path: Path | str, threads: int | None = None, precision: str = "fp32", *,
                model: Any = None) -> Session: ...


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run here (its package or device is missing); the message says why."""


class BaseSession:
    """What every session shares: batching over a fixed or dynamic batch dimension."""

    runtime = "?"
    effective_precision = "fp32"
    settings = ""
    fixed_batch: int | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - every session overrides it
        raise NotImplementedError

    def run_batched(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """``run`` over ``x`` in chunks of ``batch_size`` (all at once when None); a file with a
        fixed batch size is fed exactly that size (the last chunk padded by repeating its last row)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        fixed = self.fixed_batch
        if fixed is None:
            if not batch_size or batch_size >= len(x):
                return self.run(x)
            return np.concatenate([self.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        outs = []
        for i in range(0, len(x), fixed):
            chunk = x[i:i + fixed]
            pad = fixed - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(self.run(chunk)[:fixed - pad])
        return np.concatenate(outs)


def fixed_batch_of(path: Path | str) -> int | None:
    """The file's batch size when its input's first dimension is a number (after the guarded load)."""
    from ..onnxfile import load_checked_header

    model = load_checked_header(path)
    inits = {i.name for i in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            dims = i.type.tensor_type.shape.dim
            return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return None


def is_fp32(precision: str | None) -> bool:
    return (precision or "fp32").lower() in FP32_PRECISIONS


def describe(sess: Session) -> str:
    """``runtime (settings)`` for messages: the runtime and its effective precision."""
    return f"{sess.runtime} ({sess.settings or sess.effective_precision})"
