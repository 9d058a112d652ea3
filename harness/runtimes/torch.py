"""PyTorch: the reference module itself (eager), and ``torch.compile`` where it works on CPU.

This runtime does not read the ONNX file: it runs the torch module the file was exported
from (``prepare(..., model=...)``; the checks pass the lab's reference). It answers "does
the module, run by torch, agree with what the other runtimes make of its export?", and it
exposes every layer's output (module hooks), so a cross-runtime difference is located.
It runs float files only: an int8 ONNX file has no torch module to run.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..onnxfile import check_external_data
from .base import BaseSession

DTYPES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchSession(BaseSession):
    def __init__(self, module: Any, dtype: Any, threads: int | None, runtime: str, effective: str, settings: str):
        self.module, self.dtype, self.threads = module, dtype, threads
        self.runtime, self.effective_precision, self.settings = runtime, effective, settings

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with _threads(self.threads), torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.dtype)
            return np.asarray(self.module(x).float().numpy())


class TorchRuntime:
    exposes_intermediates = True
    runs_module = True
    device = "CPU"

    def __init__(self, name: str = "torch", compile: bool = False):
        self.name = name
        self.compile = compile

    def available(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError as e:
            return False, f"torch is not installed ({e})"
        if self.compile:
            if not hasattr(torch, "compile"):
                return False, f"torch {torch.__version__} has no torch.compile"
            if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
                return False, "torch.compile on CPU (inductor) needs a C++ compiler; none on PATH"
        return True, ""

    def supports(self, precision: str, batch: int | None = None) -> tuple[bool, str]:
        if precision in DTYPES:
            return True, ""
        return False, (f"{self.name} runs the float reference module, not {precision} ONNX files "
                       "(there is no torch module of an int8 file)")

    def prepare(self, onnx_path: Path | str | None, threads: int | None = None, precision: str = "fp32", *,
                model: Any = None) -> TorchSession:
        import copy

        import torch

        if onnx_path is not None:
            check_external_data(Path(onnx_path))  # the same guarded read as every other runtime
        if model is None:
            raise ValueError(f"the {self.name} runtime runs the reference module: the check must pass model=")
        if precision not in DTYPES:
            raise ValueError(self.supports(precision)[1])
        dtype = getattr(torch, DTYPES[precision])
        module = model.eval() if dtype == torch.float32 else copy.deepcopy(model).to(dtype).eval()
        how = "eager"
        if self.compile:
            module = torch.compile(module, dynamic=True)
            how = "torch.compile (inductor)"
        eff = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[DTYPES[precision]]
        settings = f"torch {torch.__version__.split('+')[0]} {how}, {eff}" + (f", {threads} threads" if threads else "")
        return TorchSession(module, dtype, threads, self.name, eff, settings)


EAGER = TorchRuntime("torch")
COMPILED = TorchRuntime("torch-compile", compile=True)
