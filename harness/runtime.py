"""ONNX Runtime sessions (the CPU backend; CUDA/TensorRT EPs when present) and safe loading.

A backend is one module like this one: ``session(path)`` and ``run(session, x)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def require_onnx_file(path: Path) -> None:
    """A missing path, a directory and an empty file each get their own words (not "not found"
    for a folder, not protobuf's "ir_version not set" for 0 bytes)."""
    if path.is_dir():
        raise InputError(path, "is a directory, not an ONNX file", fix="name the .onnx file inside it")
    if not path.is_file():
        raise InputError(path, "ONNX file not found", fix="check the path in the manifest")
    if path.stat().st_size == 0:
        raise InputError(path, "is an empty file (0 bytes), not an ONNX model",
                         fix="re-export the model; the export or the copy did not finish")


def check_external_data(path: Path):
    """Refuse ONNX files whose external-data locations escape their folder (untrusted files);
    returns the graph it read for that (without external weights)."""
    import onnx

    path = Path(path)
    require_onnx_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise InputError(path, f"not a valid ONNX file ({type(e).__name__}: {str(e)[:200]})",
                         fix="re-export the model; the file may be truncated") from None
    base = path.parent.resolve()
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for t in _get_all_tensors(model):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            target = (base / loc).resolve()
            if os.path.isabs(loc) or base not in target.parents:
                raise InputError(path, f"external data location {loc!r} of tensor {t.name!r} escapes {base}",
                                 fix="keep external data files beside the model (relative, no '..')")
    return model


def load_checked(path: Path | str):
    """``onnx.load`` after the external-data check; invalid files raise InputError naming them."""
    import onnx

    path = Path(path)
    check_external_data(path)
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise InputError(path, f"cannot load ONNX ({type(e).__name__}: {str(e)[:200]})", fix="re-export the model") from None


def input_name_of(model, path: Path | str) -> str:
    """The name of ``model``'s first real input (not an initializer): exporters differ (timm's
    ``onnx_export`` writes ``input0``, ours ``input``), so a user's file is fed by its own name."""
    inits = {i.name for i in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            return i.name
    raise InputError(Path(path), "the graph has no input", fix="re-export the model with its image input")


def graph_input_name(path: Path | str) -> str:
    """:func:`input_name_of` the file at ``path``."""
    return input_name_of(load_checked_header(path), path)


def load_checked_header(path: Path | str):
    """The graph without its external weights (names and shapes only), after the external-data
    check, which reads exactly that."""
    return check_external_data(Path(path))


def providers(prefer_gpu: bool = False) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    order = (["TensorrtExecutionProvider", "CUDAExecutionProvider"] if prefer_gpu else []) + ["CPUExecutionProvider"]
    return [p for p in order if p in available]


def session(path: Path | str, threads: int | None = None, provider: str = "CPUExecutionProvider",
            optimization: str = "all", spinning: bool = True, disabled_optimizers=()):
    """An InferenceSession for a checked file. ``threads``: intra-op threads (None = ORT default).
    ``spinning=False``: idle intra-op threads sleep instead of spin-waiting for work.
    ``optimization="none"`` runs a QDQ int8 file as a float simulation (Q/DQ and float ops, no
    integer kernels); ``disabled_optimizers``: ORT graph transformers to leave out."""
    import onnxruntime as ort

    path = Path(path)
    check_external_data(path)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        if disabled_optimizers:
            return ort.InferenceSession(str(path), sess_options=so, providers=[provider],
                                        disabled_optimizers=list(disabled_optimizers))
        return ort.InferenceSession(str(path), sess_options=so, providers=[provider])
    except Exception as e:
        raise InputError(path, f"ONNX Runtime cannot load it ({type(e).__name__}: {str(e)[:300]})",
                         fix="check the file with onnx.checker.check_model; re-export if needed") from None


def run(sess, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """First output of the session on ``x`` (NCHW float32), optionally in batches."""
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not batch_size or batch_size >= len(x):
        return sess.run(None, {name: x})[0]
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])
