"""OpenVINO (the ``openvino`` package), CPU device.

Inference precision is f32 unless asked otherwise (``precision="bf16"``/``"fp16"``, or
``"default"`` for the plug-in's own choice). What the session records is the precision the
compiled model reports back (``INFERENCE_PRECISION_HINT`` read after ``compile_model``), not
the one asked for: on a CPU without bf16/fp16 support the plug-in ignores such a hint and
computes in f32 (openvino 2026.4.1: bit-identical outputs, f32 read back), and on a CPU with
AVX-512 BF16 (this project's AMD EPYC) it computes in bf16 by default and when asked f16
(measured: ``default`` and ``fp16`` both read back bf16; asked f32, it agrees with ORT's CPU EP to
2.2e-6 relative, fp64 floor 1.3e-6, on repvgg_a0). A session whose effective precision is not
fp32 is judged against a noise floor measured in the run (``harness/export/checks.py``
``floor_for``: the torch model in that dtype vs float64).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..onnxfile import check_external_data
from .base import BaseSession, fixed_batch_of

HINTS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # OpenVINO's element types -> ours


def element_type_name(t: Any) -> str:
    """An ov.Type as ours: ``<Type: 'bfloat16'>`` / ``bf16`` -> ``bf16``."""
    text = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    m = re.search(r"'([^']+)'", text)
    text = (m.group(1) if m else text).lower()
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(text, NAMES.get(text, text))


class OpenVinoSession(BaseSession):
    def __init__(self, compiled: Any, effective: str, settings: str, fixed_batch: int | None):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.output = compiled.output(0)
        self.runtime = "openvino"
        self.effective_precision = effective
        self.settings = settings
        self.fixed_batch = fixed_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        res = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(res[self.output], dtype=np.float32, copy=True)


class OpenVinoRuntime:
    name = "openvino"
    device = "CPU"
    exposes_intermediates = False
    runs_module = False

    def available(self) -> tuple[bool, str]:
        try:
            import openvino as ov
        except ImportError as e:
            return False, f"the openvino package is not installed ({e}): pip install openvino"
        try:
            devices = ov.Core().available_devices
        except Exception as e:  # a broken install
            return False, f"openvino cannot list its devices ({type(e).__name__}: {str(e)[:200]})"
        if self.device not in devices:
            return False, f"openvino has no {self.device} device here (it has {', '.join(devices) or 'none'})"
        return True, ""

    def supports(self, precision: str, batch: int | None = None) -> tuple[bool, str]:
        if precision in ("fp32", "int8", "bf16", "fp16", "default"):
            return True, ""
        return False, f"openvino CPU: no {precision} inference"

    def prepare(self, onnx_path: Path | str, threads: int | None = None, precision: str = "fp32", *,
                model: Any = None) -> OpenVinoSession:
        import openvino as ov

        path = Path(onnx_path)
        check_external_data(path)  # the guarded load: external data must not escape the folder
        config: dict[str, object] = {}
        if precision in HINTS:
            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        elif precision not in ("default", "int8"):
            raise ValueError(f"openvino cannot be asked for {precision} inference")
        if precision == "int8":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # the float parts of a QDQ file in f32
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(str(path)), self.device, config)
        except Exception as e:
            raise InputError(path, f"OpenVINO cannot compile it ({type(e).__name__}: {str(e)[:300]})",
                             fix="check the file with onnx.checker.check_model; re-export if needed") from None
        effective = element_type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "int8":
            effective = f"int8 ({effective} between)"
        asked = "plug-in default" if precision == "default" else config.get("INFERENCE_PRECISION_HINT")
        settings = (f"openvino {ov.__version__.split('-')[0]} {self.device}, inference precision {effective} "
                    f"(asked {asked})" + (f", {threads} threads" if threads else ""))
        return OpenVinoSession(compiled, effective, settings, fixed_batch_of(path))


RUNTIME = OpenVinoRuntime()
