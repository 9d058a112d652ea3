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

The file may be ONNX or OpenVINO IR (``model.xml`` with its ``model.bin`` beside it). The
precision the weights are *stored* in is read from the model (its Constants) and reported
apart from the arithmetic: ``openvino.save_model`` and ``ovc`` compress weights to fp16 by
default (``compress_to_fp16=True``), and such an IR, run in f32, departs from torch on every
image by what rounding the weights costs (repvgg_a0: 1.3e-3..2.6e-3 relative, ~1800x the fp64
floor, top-1 agreement and cosine intact). The session's ``settings`` then say "weights fp16"
and ``numerics_note`` names the compression and its fix (``compress_to_fp16=False``). Asked
for fp16 (``openvino:fp16``, the user declaring fp16) on a plug-in that reads back f32, a
session with fp16 weights reports ``fp16``, so it is judged against an fp16 floor.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..onnxfile import check_external_data
from .base import BaseSession, fixed_batch_of

IR_SUFFIX = ".xml"
HINTS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # OpenVINO's element types -> ours


def element_type_name(t: Any) -> str:
    """An ov.Type as ours: ``<Type: 'bfloat16'>`` / ``bf16`` -> ``bf16``."""
    text = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    m = re.search(r"'([^']+)'", text)
    text = (m.group(1) if m else text).lower()
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(text, NAMES.get(text, text))


def weight_precision(ov_model: Any) -> tuple[str, dict[str, int]]:
    """The precision the model's float weights are stored in (the element type holding most of
    the float Constants' values) and the values per type: ``("fp16", {"fp16": 9e6})`` for an IR
    saved with ``compress_to_fp16=True``; ``("none", {})`` for a model without float constants."""
    counts: dict[str, int] = {}
    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        t = op.get_element_type()
        if not t.is_real():
            continue
        size = 1
        for d in op.get_output_shape(0):
            size *= int(d)
        name = element_type_name(t)
        counts[name] = counts.get(name, 0) + size
    if not counts:
        return "none", counts
    return max(counts, key=lambda k: counts[k]), counts


def compression_note(weights: str, counts: dict[str, int], path: Path) -> str | None:
    """Why a file's weights may cost accuracy before any arithmetic: stored below fp32."""
    if weights not in ("fp16", "bf16"):
        return None
    share = counts[weights] / max(sum(counts.values()), 1)
    how = ("openvino.save_model and ovc compress weights to fp16 by default: save with compress_to_fp16=False "
           "(ovc --compress_to_fp16=False)" if path.suffix.lower() == IR_SUFFIX else
           "the ONNX file stores its weights in " + weights + ": export or convert without fp16 weight conversion")
    return (f"{path.name} stores {share:.0%} of its weight values in {weights} ({weights} weight compression): "
            f"every output departs by what rounding the weights costs; {how}, or declare fp16 "
            "(--runtime openvino:fp16) to judge against an fp16 floor")


class OpenVinoSession(BaseSession):
    def __init__(self, compiled: Any, effective: str, settings: str, fixed_batch: int | None,
                 weights_precision: str = "fp32", numerics_note: str | None = None):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.output = compiled.output(0)
        self.runtime = "openvino"
        self.effective_precision = effective
        self.settings = settings
        self.fixed_batch = fixed_batch
        self.weights_precision = weights_precision  # what the file stores its weights in (fp16: compressed)
        self.numerics_note = numerics_note  # a cause the messages name: fp16-compressed weights

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
        ir = path.suffix.lower() == IR_SUFFIX
        if ir:
            check_ir(path)
        else:
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
            ov_model = core.read_model(str(path))
            weights, counts = weight_precision(ov_model)
            compiled = core.compile_model(ov_model, self.device, config)
        except Exception as e:
            raise InputError(path, f"OpenVINO cannot compile it ({type(e).__name__}: {str(e)[:300]})",
                             fix=("re-save the IR with openvino.save_model" if ir else
                                  "check the file with onnx.checker.check_model; re-export if needed")) from None
        effective = element_type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        note = compression_note(weights, counts, path) if precision != "int8" else None
        if note and precision == "fp16" and effective == "fp32":
            # asked fp16 (declared) on a plug-in that computes in f32: fp16 weights are the
            # fp16 part, so the run is judged against an fp16 floor, as declared
            effective, note = "fp16", None
        if effective != "fp32":
            note = None  # bf16/fp16 arithmetic is judged against its own floor, which covers fp16 weights
        if precision == "int8":
            effective = f"int8 ({effective} between)"
        asked = "plug-in default" if precision == "default" else config.get("INFERENCE_PRECISION_HINT")
        settings = (f"openvino {ov.__version__.split('-')[0]} {self.device}, inference precision {effective} "
                    f"(asked {asked})" + (f", weights {weights}" if weights not in ("fp32", "none") else "")
                    + (f", {threads} threads" if threads else ""))
        fixed = _ir_fixed_batch(ov_model) if ir else fixed_batch_of(path)
        return OpenVinoSession(compiled, effective, settings, fixed, weights, note)


def check_ir(path: Path) -> None:
    """An OpenVINO IR: the .xml and the .bin beside it (what read_model opens) both present."""
    if path.is_dir():
        raise InputError(path, "is a directory, not an OpenVINO IR file", fix="name the .xml file inside it")
    if not path.is_file():
        raise InputError(path, "OpenVINO IR file not found", fix="check the path in the manifest")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise InputError(path, f"OpenVINO IR without its weights: {weights.name} not found beside it",
                         fix="keep the .bin that openvino.save_model wrote next to the .xml")


def _ir_fixed_batch(ov_model: Any) -> int | None:
    """The IR's batch size when its first input's first dimension is static."""
    shape = ov_model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or not len(shape) or not shape[0].is_static:
        return None
    n = int(shape[0].get_length())
    return n if n > 0 else None


RUNTIME = OpenVinoRuntime()
