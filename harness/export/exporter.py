"""PyTorch -> ONNX export, cached content-addressed on disk.

``export_onnx`` writes one self-contained file (weights inline; only a model over 2 GB
goes to external data beside it). ``exported`` is the cached entry point the suites use:
the key holds the model id, the weights digest, the exporter, the opset and the library
versions, so a stale or foreign export is never reused.
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..onnxfile import INPUT_NAME, OUTPUT_NAME

EXPORTERS = ("legacy", "dynamo")
TWO_GB = 2 * 1024 ** 3


@dataclass
class ExportResult:
    path: Path
    exporter: str
    opset_requested: int
    opset_written: int | None
    seconds: float
    log: str = ""
    cached: bool = False  # True: taken from the on-disk cache, ``seconds`` is the original export's


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def export_onnx(model: torch.nn.Module, path: Path | str, *, input_size: int, opset: int = 17,
                exporter: str = "legacy", dynamic_batch: bool = True, example_batch: int = 2) -> ExportResult:
    """Export ``model`` (eval mode) with the suite's fixed names: input ``input``, output ``logits``."""

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    model = model.eval()
    x = torch.zeros(example_batch, 3, input_size, input_size)
    large = _param_bytes(model) > TWO_GB
    log = io.StringIO()
    t0 = time.perf_counter()
    # the exporters' warnings go into the log (e.g. opset 10's Resize "might cause results to
    # not match"), not onto the console
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        warnings.simplefilter("always")
        if exporter == "legacy":
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
                do_constant_folding=True)
        else:
            dyn = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
            torch.onnx.export(
                model, (x,), str(path), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=dyn, external_data=large)
    seconds = time.perf_counter() - t0
    # what concerns this model first (e.g. Resize at opset 10), the exporter's deprecation notices last
    caught = sorted(caught, key=lambda w: issubclass(w.category, (DeprecationWarning, FutureWarning)))
    warned = list(dict.fromkeys(f"{w.category.__name__}: {str(w.message)[:400]}" for w in caught))
    text_log = "\n".join(warned)[:2000] + ("\n" if warned else "") + log.getvalue()[-2000:]
    written = None
    with contextlib.suppress(Exception):
        from ..onnxfile import load_checked_header

        m = load_checked_header(path)
        written = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return ExportResult(path, exporter, opset, written, seconds, text_log)


def library_key() -> dict[str, str]:
    import onnx
    import timm

    return {"torch": torch.__version__, "onnx": onnx.__version__, "timm": timm.__version__}


def exported(lab, card, *, exporter: str = "legacy", opset: int = 17, model: torch.nn.Module | None = None,
             tag: str = "reference", dynamic_batch: bool = True) -> ExportResult:
    """Cached export of the card's reference model (or ``model``, e.g. a deploy form).

    Safe under xdist (file lock + atomic rename); an entry whose files no longer match the
    sizes and sha256 recorded when it was built (a truncated ``model.onnx``) is rebuilt.
    An export that raises is not cached: the exception propagates to the caller.
    """
    import json

    from ..models import state_digest

    model = model if model is not None else lab.reference(card)
    key = {"model": card.id, "tag": tag, "weights": state_digest(model), "exporter": exporter,
           "opset": opset, "input_size": card.input_size, **library_key()}
    if exporter == "dynamo":
        import onnxscript

        key["onnxscript"] = onnxscript.__version__
    if not dynamic_batch:
        key["dynamic_batch"] = False
    info: dict = {}

    def build(folder: Path) -> None:
        res = export_onnx(model, folder / "model.onnx", input_size=card.input_size, opset=opset, exporter=exporter,
                          dynamic_batch=dynamic_batch)
        (folder / "export.json").write_text(json.dumps(
            {"seconds": res.seconds, "opset_written": res.opset_written, "log": res.log}))
        info["fresh"] = True

    folder = lab.cache.entry("onnx", key, build)
    meta = json.loads((folder / "export.json").read_text())
    return ExportResult(folder / "model.onnx", exporter, opset, meta["opset_written"],
                        meta["seconds"], meta.get("log", ""), cached=not info.get("fresh", False))
