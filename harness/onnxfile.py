"""ONNX files as the harness reads them, whatever runtime runs them: guarded loading.

Every path that opens an ONNX file goes through :func:`check_external_data` first: a file
whose external-data locations escape its folder (an absolute path, ``..``) is refused before
any runtime reads it. Runtimes (``harness/runtimes/``) call it in ``prepare``.
"""
from __future__ import annotations

import os
from pathlib import Path

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


def external_data_files(path: Path) -> list[Path]:
    """The external-data files the ONNX file at ``path`` names (checked not to escape its folder),
    sorted, each once."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = check_external_data(path)
    base = Path(path).parent.resolve()
    found = {(base / e.value).resolve() for t in _get_all_tensors(model) if uses_external_data(t)
             for e in t.external_data if e.key == "location"}
    return sorted(found)


def load_checked(path: Path | str):
    """``onnx.load`` after the external-data check; invalid files raise InputError naming them."""
    import onnx

    path = Path(path)
    check_external_data(path)
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise InputError(path, f"cannot load ONNX ({type(e).__name__}: {str(e)[:200]})", fix="re-export the model") from None


# protobuf's 2 GB limit, with room: a bigger model keeps its weights in an external-data file
EXTERNAL_DATA_ABOVE_BYTES = 1_800_000_000


def save_model(model, path: Path | str) -> Path:
    """``onnx.save_model`` of an in-memory model to ``path``; over :data:`EXTERNAL_DATA_ABOVE_BYTES`
    its weights go to ``<file name>.data`` beside it (the folder stays self-contained). ``model``
    is left as it was: onnx moves the weights of the proto it saves out to external references,
    so a big model is saved from a copy."""
    import onnx

    path = Path(path)
    big = model.ByteSize() > EXTERNAL_DATA_ABOVE_BYTES
    if big:
        saved = onnx.ModelProto()
        saved.CopyFrom(model)
        onnx.save_model(saved, str(path), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save_model(model, str(path))
    return path


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
