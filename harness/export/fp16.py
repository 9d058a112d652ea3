"""fp16 ONNX within tolerance: the fp32 file under test, converted to fp16 with ONNX Runtime's
float16 converter, run in ORT CPU and judged against the fp32 file on the same images.

The converter is ``onnxruntime.transformers.float16.convert_float_to_float16``: the maintained
successor of onnxconverter-common's (Olive switched to it: onnxconverter-common's "is not regularly
maintained"), and it ships with onnxruntime, so no new dependency. ``keep_io_types=True``: the
file takes and returns fp32, as a deployment that swaps in the fp16 file expects.

The floor: what fp16 storage alone costs. The fp32 file with every float initializer and its
input rounded to fp16 (and back), run in fp32: its relative error against the plain fp32 file
(``fp16_rounding_floor``) is what no fp16 file can beat. The fp16 file also rounds every
activation between nodes, so its error is a measured multiple of that floor; the tolerance is
``[export] fp16_floor_multiple`` x floor (fixtures/tolerances.toml, with the measurement).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .. import onnxfile, runtimes
from ..compare import CheckFailure, cosine_rows, message, rel_max_error, top1_agreement
from ..phases import in_phase
from ..tolerances import tolerance

SECTION = "export"
CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16"
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def convert(src: Path | str, dst: Path | str, *, keep_io_types: bool = True) -> Path:
    """Write the fp16 version of the fp32 file ``src`` to ``dst``."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnxfile.load_checked(src)  # the guarded load: external data must not escape the folder
    fp16 = convert_float_to_float16(model, keep_io_types=keep_io_types)
    onnx.save(fp16, str(dst))
    return Path(dst)


def fp16_file(lab: Any, fp32_path: Path, *, keep_io_types: bool = True) -> Path:
    """The fp16 file of ``fp32_path`` in the lab's artifact cache (converted once per fp32 file)."""
    import onnxruntime

    from ..quant.quantize import cached_file_digest  # the checks' own digest of the file (external data too)

    key = {"fp32": cached_file_digest(Path(fp32_path), lab), "converter": CONVERTER, "onnxruntime": onnxruntime.__version__,
           "keep_io_types": keep_io_types}
    folder = lab.cache.entry("fp16", key, lambda tmp: convert(fp32_path, tmp / "model.fp16.onnx",
                                                              keep_io_types=keep_io_types))
    return folder / "model.fp16.onnx"


def rounded_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp32 model with every float initializer rounded to fp16 and back (still fp32)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.data_type == FLOAT:
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), init.name))
    return out


def run(model: Path | onnx.ModelProto, x: np.ndarray, *, threads: int | None = None, batch: int = 8,
        runtime: Any = None) -> np.ndarray:
    """Logits of ``model`` through ``runtime`` (harness/runtimes; default ort) for the (N, 3, H, W)
    float32 batch ``x``, fed in the input's declared element type, returned as float32. An
    in-memory model is written to a temporary file first (every runtime prepares files)."""
    rspec = runtimes.spec(runtime)
    with tempfile.TemporaryDirectory(prefix="zc-fp16-") as d:
        if isinstance(model, onnx.ModelProto):
            path = onnxfile.save_model(model, Path(d) / "model.onnx")
        else:
            path = Path(model)
        sess = rspec.prepare(path, threads)
        header = onnxfile.load_checked_header(path)
        if header.graph.input[0].type.tensor_type.elem_type == FLOAT16 and hasattr(sess, "input_dtype"):
            sess.input_dtype = np.float16  # fed in the input's declared element type
        return np.asarray(sess.run_batched(np.asarray(x, dtype=np.float32), batch), dtype=np.float32)


def io_types(model: onnx.ModelProto) -> str:
    name = {FLOAT: "float", FLOAT16: "float16"}
    t_in = model.graph.input[0].type.tensor_type.elem_type
    t_out = model.graph.output[0].type.tensor_type.elem_type
    return f"{name.get(t_in, t_in)} -> {name.get(t_out, t_out)}"


def rounded_run(fp32: onnx.ModelProto, x: np.ndarray, *, threads: int | None = None, runtime: Any = None) -> np.ndarray:
    """Logits of the fp32 model with weights and input rounded to fp16, run in fp32: their
    rel_max_error against the plain fp32 file is the fp16 rounding floor."""
    return run(rounded_to_fp16(fp32), x.astype(np.float16).astype(np.float32), threads=threads, runtime=runtime)


def check_fp16_onnx_within_tolerance(fp32_path: Path, fp16_path: Path, x: np.ndarray, record, *, label: str,
                                     threads: int | None = None, runtime: Any = None, lab: Any = None) -> None:
    """The fp16 file computes what the fp32 file computes (both run by ``runtime``, default ort),
    within a multiple of the fp16 rounding floor. ``lab``: its phase log times the runs of the
    two files as evaluation (the rounding floor is the suite's overhead)."""
    from .checks import cached_outputs  # each run's output on disk, keyed by the file it runs

    x = np.asarray(x, dtype=np.float32)
    fp16 = onnxfile.load_checked_header(fp16_path)
    rspec = runtimes.spec(runtime)
    with in_phase(lab, "evaluation"):
        ref = cached_outputs(lab, Path(fp32_path), x, "fp16 check: the fp32 file",
                             lambda: run(Path(fp32_path), x, threads=threads, runtime=rspec), rspec)
    rounded = cached_outputs(lab, Path(fp32_path), x, "fp16 check: the fp32 file with weights and input rounded to fp16",
                             lambda: rounded_run(onnxfile.load_checked(fp32_path), x, threads=threads, runtime=rspec),
                             rspec)
    floor = rel_max_error(rounded, ref)
    with in_phase(lab, "evaluation"):
        out = cached_outputs(lab, Path(fp16_path), x, "fp16 check: the fp16 file",
                             lambda: run(Path(fp16_path), x, threads=threads, runtime=rspec), rspec)
    record(runtime=rspec.id)
    err = rel_max_error(out, ref)
    multiple = tolerance(SECTION, "fp16_floor_multiple")
    tol = multiple * floor
    cos = cosine_rows(out, ref)
    figures = {"fp16_rel_max_error": err, "fp16_rounding_floor": floor, "fp16_tolerance": tol,
               "fp16_error_over_floor": round(err / floor, 2) if floor > 0 else None,
               "fp16_min_cosine": float(np.min(cos)), "fp16_top1_agreement": top1_agreement(out, ref),
               "fp16_io_types": io_types(fp16),
               "fp16_float_initializers": sum(1 for i in fp16.graph.initializer if i.data_type == FLOAT),
               "fp16_onnx_mb": round(Path(fp16_path).stat().st_size / 2**20, 2), "n_images": len(x)}
    record(**figures)
    if not err <= tol:  # NaN or inf fails too
        worst = int(np.argmax(np.max(np.abs(out.astype(np.float64) - ref), axis=1)))
        cause = (f"the fp16 file computes something else than fp32 rounded to fp16: a weight changed in or after "
                 f"conversion, an op the converter mishandles, or a file of another model (worst image {worst}, "
                 f"cosine {float(cos[worst]):.6f})")
        raise CheckFailure(message(f"fp16 vs fp32 ONNX relative error of {label} ({rspec.id}, {len(x)} images)",
                                   f"{err:.3g}", f"<= {tol:.3g} ({multiple:g} x fp16 rounding floor {floor:.3g})",
                                   f"{Path(fp16_path).name}, converted by {CONVERTER}", cause=cause), figures)
