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


def value_info_bytes(vi) -> int | None:
    """Bytes of one image's tensor ``vi`` (a ValueInfoProto): symbolic dimensions (the batch) count
    as 1; None when its shape or element type is not known."""
    import numpy as np
    import onnx

    tt = vi.type.tensor_type
    if not tt.HasField("shape") or tt.elem_type == onnx.TensorProto.UNDEFINED:
        return None
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def peak_activation_bytes_per_image(path: Path | str) -> int:
    """The most bytes of intermediate tensors alive at once for one image when the graph runs
    node by node in its stored (topological) order, each tensor freed after its last reader:
    what a runtime's memory planner must hold per image of a batch, weights apart.

    Only tensors computed from the image count: a QDQ file's dequantized weights are the same
    for any batch (a fixed cost, as the weights are). Shapes come from ONNX shape inference;
    symbolic dimensions (the batch) count as 1 and a tensor whose shape is not inferred counts 0.
    """
    import onnx

    model = load_checked_header(path)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an uninferable graph counts the shapes it already holds
        pass
    graph = model.graph
    sizes = {vi.name: size for vi in [*graph.input, *graph.value_info, *graph.output]
             if (size := value_info_bytes(vi)) is not None}
    weights = {t.name for t in graph.initializer}
    last_read = {name: step for step, node in enumerate(graph.node) for name in node.input}
    kept = {o.name for o in graph.output}
    inputs = [i.name for i in graph.input if i.name not in weights]
    per_image = set(inputs)  # tensors computed from the image
    for node in graph.node:
        if per_image.intersection(node.input):
            per_image.update(n for n in node.output if n)
    sizes = {name: size for name, size in sizes.items() if name in per_image}
    live = sum(sizes.get(name, 0) for name in inputs)
    peak = live
    for step, node in enumerate(graph.node):
        live += sum(sizes.get(name, 0) for name in node.output if name)
        peak = max(peak, live)
        # after the node: its inputs read for the last time and its outputs nobody reads
        done = {n for n in node.input if n and n not in weights and last_read.get(n) == step}
        done |= {n for n in node.output if n and n not in last_read}
        live -= sum(sizes.get(name, 0) for name in done - kept)
    return peak
