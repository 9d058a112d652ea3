"""Export checks: plain functions of (card, lab, case/file, record) that know nothing of pytest.

What is checked for an ONNX file (ours, exported per exporter/opset case, or the user's
from the manifest):

* the exporter wrote the opset it was asked for;
* ``onnx.checker.check_model(full_check=True)``; one input ``[batch, 3, S, S]`` float32
  and one output ``[batch, 1000]`` with a symbolic batch dimension (and the suite's names);
* ONNX Runtime CPU vs torch eager on embedded images: ``max|d| / max|ref|`` within
  ``max(k * floor, minimum)`` where ``floor`` is the same model's float32 vs float64
  departure measured now, on the same images; cosine per image above a minimum; top-1
  agreement recorded, never gated on alone (a 1% change of one conv channel keeps it 100%);
* the same file at batch 1, 4 and 8 gives the same rows.

A failure names the first diverging layer (:mod:`harness.divergence`) and, where a cheap
probe can tell, the cause (weights, Resize mode, reversed input channels, batch statistics).
"""
from __future__ import annotations

import copy
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from .. import divergence, onnxfile, runtimes
from ..cache import array_digest, memoised
from ..compare import CheckFailure, Inconclusive, check, cosine_rows, message, rel_max_error, top1_agreement
from ..constants import NUM_CLASSES
from ..errors import InputError
from ..lab import reference_run_key, torch_logits
from ..onnxfile import INPUT_NAME, OUTPUT_NAME
from ..phases import in_phase
from ..runtimes import ort as ortrt  # the ORT-only check below: graph-optimizer bisection
from ..tolerances import tolerance
from ..zoo import ModelCard
from .exporter import TWO_GB, ExportResult, exported

if TYPE_CHECKING:  # the check signature's types (harness/testing.py); no import at run time
    from ..testing import LabLike, Record

SECTION = "export"
EXPORT_IMAGES = 16  # eval images per numerics check: enough for a max over images, seconds on 2 cores
BATCH_IMAGES = 8
BATCH_SIZES = (1, 4, 8)


@dataclass(frozen=True)
class ExportCase:
    exporter: str
    opset: int

    @property
    def id(self) -> str:
        return f"{self.exporter}-opset{self.opset}"


# legacy at the opsets deployments use; dynamo as asked (it writes 18 whatever is asked);
# opset 10: the seeds' mmcls note ("opset must be 11; 10 fails"), tried for every family
CASES = (ExportCase("legacy", 11), ExportCase("legacy", 13), ExportCase("legacy", 17),
         ExportCase("dynamo", 17), ExportCase("legacy", 10))


# --- exports ------------------------------------------------------------------------------

def export_case(lab, card: ModelCard, case: ExportCase, *, model: nn.Module | None = None,
                tag: str = "reference") -> ExportResult:
    """The cached export for ``case``; an exporter that raises becomes a CheckFailure (once
    session, in the lab's memo: the other checks of the case report the same failure without
    re-trying)."""
    def attempt() -> ExportResult | CheckFailure:
        try:
            return exported(lab, card, exporter=case.exporter, opset=case.opset, model=model, tag=tag)
        except Exception as e:  # the exporter's own error types vary by version and path
            first = (str(e).strip().splitlines() or [""])[0][:300]
            return CheckFailure(message(
                f"{case.exporter} export of {card.id} ({tag}) at opset {case.opset}", f"{type(e).__name__}: {first}",
                "an ONNX file", "harness/export/exporter.py export_onnx -> torch.onnx.export",
                cause=f"the {case.exporter} exporter cannot express this model at opset {case.opset}"),
                {"export_error": f"{type(e).__name__}: {first}"})

    outcome = memoised(lab, "export.outcome", (card.id, case, tag), attempt, lambda _: 1)
    if isinstance(outcome, CheckFailure):
        raise outcome from None
    return outcome


def card_fusion_model(lab, card: ModelCard) -> tuple[nn.Module, str]:
    """The reference with its fusion upsampling switched to the card's claimed mode.

    timm's HRNet upsamples with ``nearest``; the HRNet card (and mmcls/official HRNet)
    says bilinear. The exporter's behaviour at opset 10 depends on exactly this.
    """
    mode = card.claims.get("fusion_upsample", "nearest")

    def build() -> nn.Module:
        variant = copy.deepcopy(lab.reference(card))
        for m in variant.modules():
            if isinstance(m, nn.Upsample):
                m.mode = mode
                m.align_corners = False if mode in ("bilinear", "bicubic") else None
        return variant.eval()

    # a deep copy of the reference: one at a time (the kind's budget in harness/lab.py)
    return lab.memo("export.fusion_variant", (card.id, mode), build), mode


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2 ** 20, 2)


def opset_in_file(path: Path, lab=None) -> int | None:
    """The ai.onnx opset the file declares (read from the file, not from the export's log)."""
    proto = header(path, lab)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def check_opset_written(res: ExportResult, record, *, label: str, lab=None) -> None:
    """The file declares the opset that was asked of the exporter."""
    written = opset_in_file(res.path, lab)
    record(exporter=res.exporter, opset_requested=res.opset_requested, opset_written=written,
           export_seconds=round(res.seconds, 2), export_cached=res.cached, onnx_mb=_mb(res.path))
    import torch as _t

    cause = (f"the dynamo exporter (torch {_t.__version__}) ignores opset_version and writes its own default"
             if res.exporter == "dynamo" else f"the {res.exporter} exporter did not honour opset_version")
    check(written == res.opset_requested, f"opset written by the {res.exporter} exporter for {label}",
          written, res.opset_requested, f"{res.path} opset_import (ai.onnx)", cause=cause)


# --- structure ----------------------------------------------------------------------------

def check_onnx_valid(path: Path, record, *, label: str, self_contained: bool = False, lab=None) -> None:
    """``onnx.checker.check_model(full_check=True)`` (by path: external data and >2 GB work).

    ``self_contained``: the suite's own exports must carry their weights inline (one file to
    hand over) unless the model is over 2 GB, the protobuf limit.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = header(path, lab)
    external = sorted({next((e.value for e in t.external_data if e.key == "location"), "")
                       for t in proto.graph.initializer if uses_external_data(t)})
    record(onnx_ir_version=proto.ir_version, onnx_external_data=external, onnx_nodes=len(proto.graph.node))
    if self_contained and external:
        weights = sum(p.stat().st_size for p in {path.parent / e for e in external} if p.is_file())
        if weights <= TWO_GB:
            raise CheckFailure(message(f"external data files of {label}", external, "none (one self-contained file)",
                                       str(path), cause=f"the exporter wrote {weights / 2 ** 20:.0f} MB of weights "
                                       "beside the file although the model is under 2 GB (dynamo's external_data "
                                       "default?)"), {"onnx_external_data": external})
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # ValidationError, InferenceError, and friends
        text = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckFailure(message(f"onnx.checker.check_model(full_check=True) on {label}", f"{type(e).__name__}: {text}",
                                   "no error", str(path), cause="the file is not valid ONNX for its declared opset"),
                           {"checker_error": text}) from None


def _dims(value_info) -> list:
    t = value_info.type.tensor_type
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]


def header(path: Path, lab=None):
    """The file's graph without external weights (after the escaping-location check); memoised
    in the lab by path, size and mtime so a rewritten file is read again."""
    path = Path(path)
    onnxfile.require_onnx_file(path)  # a folder or an empty file named as such
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    # the one guarded loader: InputError naming the file when invalid or escaping its folder
    return memoised(lab, "export.header", key, lambda: onnxfile.load_checked_header(path))


def declared_io(path: Path, lab=None) -> dict:
    proto = header(path, lab)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    return {"inputs": [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in inputs],
            "outputs": [(o.name, o.type.tensor_type.elem_type, _dims(o)) for o in proto.graph.output]}


def elem_type_name(elem_type: int) -> str:
    """``10`` -> ``float16`` (ONNX TensorProto's names, lower case)."""
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"element type {elem_type}"


def run_failure_cause(path: Path, default: str, lab=None) -> str:
    """Why ORT may refuse the harness's float32 image batch: the file's declared inputs first
    (an fp16 input, two inputs), else ``default``."""
    try:
        inputs = declared_io(path, lab)["inputs"]
    except Exception:  # the check that reads the header reports a bad file by itself
        return default
    if len(inputs) != 1:
        return (f"the file declares {len(inputs)} graph inputs ({', '.join(n for n, _, _ in inputs)}); "
                f"the harness feeds one float32 image batch")
    name, itype, _ = inputs[0]
    if itype != 1:
        return f"input '{name}' is {elem_type_name(itype)}, not float32: the harness feeds float32 images"
    return default


def check_declared_io(path: Path, record, *, input_size: int, label: str, names: tuple[str, str] | None = (
        INPUT_NAME, OUTPUT_NAME), require_dynamic_batch: bool = True, lab=None) -> None:
    """One float input [batch, 3, S, S], one output [batch, 1000]; batch symbolic."""
    io = declared_io(path, lab)
    record(declared_inputs=[f"{n}{d}" for n, _, d in io["inputs"]],
           declared_outputs=[f"{n}{d}" for n, _, d in io["outputs"]])
    problems: list[tuple[str, object, object, str]] = []  # (what, measured, expected, cause)
    if len(io["inputs"]) != 1 or len(io["outputs"]) != 1:
        problems.append(("number of graph inputs/outputs", (len(io["inputs"]), len(io["outputs"])), (1, 1),
                         "a classifier file takes one image batch and returns one logits tensor"))
    else:
        (iname, itype, idims), (oname, _otype, odims) = io["inputs"][0], io["outputs"][0]
        if names is not None and (iname, oname) != names:
            problems.append(("graph input/output names", (iname, oname), names,
                             "exported without input_names/output_names"))
        if itype != 1:
            problems.append((f"element type of input '{iname}'", elem_type_name(itype), "float32", "not an fp32 file"))
        want_in = ["batch", 3, input_size, input_size]
        if len(idims) != 4 or idims[1:] != want_in[1:]:
            problems.append((f"shape of input '{iname}'", idims, want_in,
                             f"the file is not for {input_size}x{input_size} RGB input"))
        if len(odims) != 2 or odims[1] != NUM_CLASSES:
            problems.append((f"shape of output '{oname}'", odims, ["batch", NUM_CLASSES], "not 1000-class logits"))
        for name, dims in ((iname, idims), (oname, odims)):
            if dims and require_dynamic_batch and not isinstance(dims[0], str):
                problems.append((f"dim 0 of '{name}'", dims[0], "a symbolic batch dimension",
                                 "exported without a dynamic batch axis (dynamic_axes / dynamic_shapes): "
                                 "the file only runs at one batch size"))
        record(batch_dim=idims[0] if idims else None, batch_dynamic=bool(idims) and isinstance(idims[0], str))
    if problems:
        what, measured, expected, cause = problems[0]
        more = f" (+{len(problems) - 1} more: {'; '.join(p[0] for p in problems[1:])})" if len(problems) > 1 else ""
        raise CheckFailure(message(f"{what} of {label}", measured, expected, f"{path} graph.input/output",
                                   cause=cause + more), {"io_problems": [p[0] for p in problems]})


def require_input_size(path: Path, card: ModelCard, lab=None) -> None:
    """A user file with fixed spatial dims other than the card's cannot be compared: say so."""
    io = declared_io(path, lab)
    if not io["inputs"]:
        raise InputError(path, "the graph has no input", fix="export the model with its image input")
    dims = io["inputs"][0][2]
    s = card.input_size
    if len(dims) != 4 or any(isinstance(d, int) and d > 0 and d != want for d, want in zip(dims[1:], (3, s, s))):
        raise InputError(path, f"declares input {dims}, but {card.id} takes [batch, 3, {s}, {s}]",
                         fix=f"export {card.id} at its input size {s}, or list the file under the model it belongs to")


# --- numerics -----------------------------------------------------------------------------

FLOOR_BATCH = 4


def reference_and_floor(model: nn.Module, x: torch.Tensor, lab=None) -> tuple[np.ndarray, np.ndarray]:
    """torch float32 and float64 logits of ``model`` on ``x`` (memoised in the lab per model and
    batch; the memo holds weak references, so it keeps neither the model nor the batch alive).

    float64 is the model's own rounding noise: how far float32 arithmetic may drift from the
    exact function on these images. Deep random-init nets are conditioned very differently
    (measured 6.5e-7 repvgg_a0 .. 3.2e-6 resnest50), so the floor is measured, not assumed.
    """
    def compute() -> dict[str, np.ndarray]:
        ref32 = torch_logits(model, x)
        with torch.no_grad():
            # a few images at a time: fp64 activations of a large model at 416 px are large
            model64 = copy.deepcopy(model).double()
            ref64 = np.concatenate([model64(xb.double()).numpy() for xb in x.split(FLOOR_BATCH)])
            del model64
        return {"ref32": ref32, "ref64": ref64}

    def build() -> tuple:
        key = floor_cache_key(model, x, lab)
        arrays = compute() if key is None else lab.cache.arrays("fp64-floor", key, compute)
        return weakref.ref(model), weakref.ref(x), arrays["ref32"], arrays["ref64"]

    def same_objects(entry: tuple) -> bool:  # an id can be reused once its object is gone
        return entry[0]() is model and entry[1]() is x

    entry = memoised(lab, "export.floor", (id(model), id(x)), build,
                     lambda e: e[2].nbytes + e[3].nbytes, same_objects)
    return entry[2], entry[3]


# Part of the fp64 floor's disk key: bump it when reference_and_floor computes differently.
FLOOR_VERSION = 1


def floor_cache_key(model: nn.Module, x: torch.Tensor, lab=None) -> dict | None:
    """The disk key of ``reference_and_floor(model, x)`` (``Lab.reference_run_key``: None for a
    module the lab did not build as a reference), versioned by ``FLOOR_VERSION``."""
    return reference_run_key(model, x, lab, FLOOR_BATCH, FLOOR_VERSION)


def numerics_tolerance(floor: float) -> float:
    return max(tolerance(SECTION, "rel_floor_multiple") * floor, tolerance(SECTION, "rel_min"))


def _session(path: Path, lab=None, runtime=None, model: nn.Module | None = None, threads: int | None = None):
    """A session of ``runtime`` (a ``--runtime`` spec or name; default ort) for the file at the
    run's ``--threads``; ``model``: the module the file was exported from (the torch runtime runs it)."""
    if threads is None:
        threads = lab.settings.threads if lab is not None else None
    return runtimes.spec(runtime).prepare(path, threads, model=model)


def low_precision_floor(model: nn.Module, x: torch.Tensor, ref64: np.ndarray, precision: str) -> tuple[float, float]:
    """(max error, 1 - min cosine) of ``model`` computed by torch in ``precision`` (bf16, fp16)
    against float64, measured now on these images: the noise floor of a runtime whose
    arithmetic is not fp32 (the fp32 floor says nothing about bf16's 8-bit mantissa)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise ValueError(f"no torch dtype to measure a {precision} noise floor with")
    low = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        out = np.concatenate([low(xb.to(dtype)).float().numpy() for xb in x.split(FLOOR_BATCH)])
    del low
    return rel_max_error(out, ref64), float(1.0 - np.min(cosine_rows(out, ref64)))


def floor_for(model: nn.Module, x: torch.Tensor, ref32: np.ndarray, ref64: np.ndarray, precision: str
              ) -> tuple[float, float, str]:
    """(floor, cosine floor or 0, what it is) for a session whose effective precision is ``precision``."""
    if precision in ("fp32", "f32"):
        return rel_max_error(ref32, ref64), 0.0, "fp64 noise floor"
    floor, cos_floor = low_precision_floor(model, x, ref64, precision)
    return floor, cos_floor, f"{precision} noise floor (torch {precision} vs fp64, measured in this run)"


def _fixed_batch(path: Path, lab=None) -> int | None:
    dims = declared_io(path, lab)["inputs"][0][2]
    return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None


def run_file(path: Path, x: np.ndarray, lab=None, batch_size: int | None = 8, runtime=None,
             model: nn.Module | None = None, sess=None) -> np.ndarray:
    """The file's first output on ``x`` through ``runtime`` (default ort); a fixed-batch file is
    fed exactly its batch size."""
    sess = sess or _session(path, lab, runtime, model)
    return sess.run_batched(x, batch_size)


# Part of every cached run's disk key: a change to how the checks run a file must bump it
RUNS_VERSION = 1


def runs_cache_key(lab, path: Path, x: np.ndarray, rspec, how: str) -> dict | None:
    """The disk key of a runtime's outputs of the file at ``path`` on ``x``, or None where they
    are not cached: no lab cache, or a runtime other than ONNX Runtime on this CPU (whose
    outputs test_runtime_is_deterministic measures bit-identical run to run, and at 1 and 2
    threads). Everything that can change them is in it, as in the evaluation's key
    (harness/quant/checks.py eval_cache_key): the file by content, the inputs, the runtime,
    the library versions, this CPU's kernel-relevant flags and the planned threads."""
    cache = getattr(lab, "cache", None)
    if cache is None or rspec.name != "ort" or not runtimes.is_builtin(rspec.name) or not rspec.on_cpu:
        return None
    from ..quant.quantize import cached_file_digest, runtime_numerics_key

    return {"file": cached_file_digest(path, lab), "inputs": array_digest(x), "runtime": rspec.id, "how": how,
            **runtime_numerics_key(lab), "code": RUNS_VERSION}


def runs_of_file(path: Path, x: np.ndarray, lab, rspec, model: nn.Module | None, how: str,
                 run: Callable[[Any], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict[str, str], Any]:
    """``run(session)``'s arrays on a session of the file, the session's facts
    (``effective_precision``, ``settings``) and the session; on disk under ``runs_cache_key``
    (a warm rerun then makes no session: None, a failing check makes its own for diagnosis)."""
    def fresh() -> tuple[dict[str, np.ndarray], dict[str, str], Any]:
        sess = _session(path, lab, rspec, model)
        return run(sess), {"effective_precision": sess.effective_precision, "settings": sess.settings}, sess

    key = runs_cache_key(lab, path, x, rspec, how)
    if key is None:
        return fresh()
    made: dict[str, Any] = {}

    def compute() -> dict[str, np.ndarray]:
        arrays, facts, made["session"] = fresh()
        return {**arrays, "session_facts": np.array(json.dumps(facts))}

    cached = lab.cache.arrays("runtime-outputs", key, compute)
    facts = json.loads(str(cached["session_facts"]))
    return {k: v for k, v in cached.items() if k != "session_facts"}, facts, made.get("session")


def cached_outputs(lab, path: Path, x: np.ndarray, how: str, compute: Callable[[], np.ndarray],
                   runtime=None) -> np.ndarray:
    """``compute()``: one array a runtime computes from the file at ``path`` alone (``how`` names
    which: the file itself, at an optimization level, its fp16-rounded twin) on ``x``; on disk
    under ``runs_cache_key`` where that caches (the shipped ort on this CPU), else computed."""
    key = runs_cache_key(lab, Path(path), np.asarray(x), runtimes.spec(runtime), how)
    if key is None:
        return compute()
    return lab.cache.arrays("runtime-outputs", key, lambda: {"out": np.asarray(compute())})["out"]


def check_matches_reference(path: Path, model: nn.Module, x: torch.Tensor, record, *, label: str,
                            lab=None, runtime=None) -> None:
    """``runtime`` (default ort) on the file vs torch eager: scale-relative max error within
    k x the noise floor of the arithmetic the runtime reports (fp64 floor for fp32; a bf16 or
    fp16 floor measured now for a runtime that computes in those)."""
    ref32, ref64 = reference_and_floor(model, x, lab)
    xn = x.numpy()
    rspec = runtimes.spec(runtime)
    try:
        with in_phase(lab, "evaluation"):
            outs, facts, sess = runs_of_file(path, xn, lab, rspec, model, "logits at batch 8",
                                             lambda s: {"logits": run_file(path, xn, lab, sess=s)})
        out = outs["logits"]
    except Exception as e:
        raise CheckFailure(message(f"{rspec.id} on {label}", f"{type(e).__name__}: {str(e)[:200]}",
                                   f"logits for {tuple(xn.shape)}", str(path),
                                   cause=run_failure_cause(path, "the file does not run on the card's input", lab))) from None
    record(runtime=rspec.id, effective_precision=facts["effective_precision"], runtime_settings=facts["settings"])
    label = f"{label} on {facts['settings']}"
    if out.shape != ref32.shape:
        raise CheckFailure(message(f"output shape of {label}", out.shape, ref32.shape, str(path),
                                   cause="the file does not compute the model's logits"))
    floor, cos_floor, floor_kind = floor_for(model, x, ref32, ref64, facts["effective_precision"])
    tol = numerics_tolerance(floor)
    err = rel_max_error(out, ref32)
    cos = cosine_rows(out, ref32)
    cos_min = tolerance(SECTION, "min_cosine")
    if cos_floor:  # a low-precision runtime: the cosine gate is tied to its floor too
        cos_min = min(cos_min, 1.0 - tolerance(SECTION, "rel_floor_multiple") * cos_floor)
    agree = top1_agreement(out, ref32)
    figures = dict(n_images=len(xn), output_scale=float(np.max(np.abs(ref32))), rel_max_error=err,
                   noise_floor_fp64=rel_max_error(ref32, ref64), noise_floor=floor, noise_floor_kind=floor_kind,
                   tolerance=tol, error_over_floor=err / floor if floor > 0 else None,
                   min_cosine=float(np.min(cos)), cosine_min_allowed=cos_min, top1_agreement=agree)
    record(**figures)
    ok_err, ok_cos = err <= tol, float(np.min(cos)) >= cos_min
    if ok_err and ok_cos:
        return
    worst = int(np.argmax(np.max(np.abs(out.astype(np.float64) - ref32), axis=1)))
    sess = sess or _session(path, lab, rspec, model)  # outputs read from disk: a session to diagnose with
    # a runtime that knows why its numbers move (OpenVINO: weights stored in fp16) says so first
    cause = "; ".join(c for c in (getattr(sess, "numerics_note", None),
                                  _input_channel_probe(path, xn, ref32, tol, lab, sess)) if c) or None
    div = None
    try:
        if not (rspec.runtime.exposes_intermediates and rspec.name.startswith("ort")):
            raise _NoIntermediates(f"{rspec.id} exposes no intermediates: compared the final logits of "
                                   f"{len(xn)} images only")
        k, minimum = tolerance(SECTION, "rel_floor_multiple"), tolerance(SECTION, "layer_rel_min")
        div = divergence.first_divergence(model, path, x[worst:worst + 1], k=k, minimum=minimum,
                                          threads=lab.settings.threads if lab is not None else None)
    except _NoIntermediates as e:
        where = f"{path} ({e})"
    except Exception as e:  # the locator must never hide the finding itself
        where = f"{path} (layer search failed: {type(e).__name__}: {str(e)[:150]})"
    else:
        figures.update(div.figures())
        record(**div.figures())
        where = f"{div.where()}; file {path}"
        cause = "; ".join(c for c in (cause, div.hint) if c) or None
    figures["worst_image"] = worst
    if not ok_err:
        what = f"max|{rspec.id} - torch| / max|torch| of {label} on {len(xn)} images"
        raise CheckFailure(message(what, f"{err:.3g}", f"<= {tol:.3g} ({tolerance(SECTION, 'rel_floor_multiple'):g} x "
                                   f"{floor_kind} {floor:.3g}; top-1 agreement {agree:.3f})", where,
                                   cause=cause or "the file computes a different function"), figures)
    raise CheckFailure(message(f"min cosine({rspec.id}, torch) of {label} over {len(xn)} images", f"{np.min(cos):.9f}",
                               f">= {cos_min}", where, cause=cause or "the file computes a different function"),
                       figures)


class _NoIntermediates(Exception):
    """The runtime under test cannot show its layer outputs: say what was compared instead."""


def _input_channel_probe(path: Path, x: np.ndarray, ref: np.ndarray, tol: float, lab, sess=None) -> str | None:
    """Does the file match once its input channels are reversed? Then it expects BGR."""
    try:
        swapped = run_file(path, np.ascontiguousarray(x[:, ::-1]), lab, sess=sess)
    except Exception:
        return None
    err = rel_max_error(swapped, ref)
    if err <= tol:
        return (f"the file reverses the input channels: fed BGR it matches torch (error {err:.3g}); "
                "a channel swap (RGB<->BGR) is baked into the graph or expected of the caller")
    return None


# --- batch consistency --------------------------------------------------------------------

def check_batch_consistency(path: Path, x: torch.Tensor, record, *, label: str, lab=None,
                            model: nn.Module | None = None, runtime=None) -> None:
    """Rows at batch 1 equal the same rows computed at batch 4 and 8."""
    xn = np.ascontiguousarray(x[:BATCH_IMAGES].numpy())
    tol = tolerance(SECTION, "batch_rel_max")
    fixed = _fixed_batch(path, lab)
    sizes = [b for b in BATCH_SIZES if fixed is None or b == fixed]
    record(batch_sizes=sizes, batch_fixed=fixed)
    if len(sizes) < 2:
        raise Inconclusive(f"{label} has a fixed batch dimension ({fixed}): rows cannot be compared across batch sizes",
                           {"batch_fixed": fixed}, failing=False)
    rspec = runtimes.spec(runtime)
    running: dict[str, Any] = {}  # the session and the batch size being run, for a failure's message

    def rows_at_each_batch(sess) -> dict[str, np.ndarray]:
        running["session"], out = sess, {}
        for b in sizes:
            running["batch"] = b
            out[f"b{b}"] = np.concatenate([sess.run(xn[i:i + b]) for i in range(0, len(xn), b)])
        return out

    try:
        with in_phase(lab, "evaluation"):
            arrays, facts, _ = runs_of_file(path, xn, lab, rspec, model, f"rows at batches {sizes}", rows_at_each_batch)
    except Exception as e:
        if "batch" not in running:  # no session: as the other checks, the error itself
            raise
        settings = running["session"].settings
        raise CheckFailure(message(f"{settings} on {label} on {settings} at batch {running['batch']}",
                                   f"{type(e).__name__}: {str(e)[:200]}", "logits", str(path),
                                   cause=run_failure_cause(path, "a shape is fixed inside the graph "
                                                                 "(a Reshape to batch 1?)", lab))) from None
    record(runtime=rspec.id, effective_precision=facts["effective_precision"], runtime_settings=facts["settings"])
    label = f"{label} on {facts['settings']}"
    outs = {b: arrays[f"b{b}"] for b in sizes}
    base = outs[sizes[0]]
    errs = {b: rel_max_error(outs[b], base) for b in sizes[1:]}
    record(**{f"batch{b}_vs_batch{sizes[0]}_rel": e for b, e in errs.items()}, batch_tolerance=tol)
    bad = {b: e for b, e in errs.items() if e > tol}
    if not bad:
        return
    b, err = max(bad.items(), key=lambda kv: kv[1])
    where, cause = str(path), "rows depend on the other images of the batch"
    try:
        found = divergence.first_batch_dependent_node(path, xn[:b], tol, model=model,
                                                      threads=lab.settings.threads if lab is not None else None)
    except Exception:
        found = None
    if found:
        mod = f" (module '{found['module']}')" if found.get("module") else ""
        ins = ", ".join(found.get("inputs", [])[:3])
        where = f"first batch-dependent node: '{found['node']}' ({found['op_type']} <- {ins}){mod}; file {path}"
        why = ("a BatchNormalization in training mode (training_mode=1): re-export after model.eval()"
               if found.get("training_mode") else "batch statistics? a BatchNorm in training mode?")
        cause += f": node '{found['node']}' mixes images across the batch ({why})"
    raise CheckFailure(message(f"max|rows at batch {b} - rows at batch {sizes[0]}| / scale of {label}", f"{err:.3g}",
                               f"<= {tol:g}", where, cause=cause), {"batch_errors": errs})


# --- ORT's graph optimizer ------------------------------------------------------------------

def fp32_file_under_test(lab, card: ModelCard) -> tuple[Path, str]:
    """The manifest's ``onnx`` when given, else the export the int8 suite quantizes (legacy, opset 17)."""
    from ..quant.quantize import fp32_source

    user = lab.artifacts(card).get("onnx")
    path = fp32_source(lab, card)
    return Path(path), (f"manifest onnx {Path(user).name} of {card.id}" if user is not None
                        else f"{card.id} (legacy exporter, opset 17)")


def check_ort_optimizations(card: ModelCard, lab: LabLike, record: Record, *, path: Path, model: nn.Module, label: str,
                            runner=None) -> None:
    """ORT_ENABLE_ALL vs ORT_DISABLE_ALL on the same fp32 file, within the export tolerance
    (k x the model's fp64 floor); ``runner`` replaces ORT (self-tests plant a faulty transformer)."""
    x, _ = lab.inputs(card, "eval", limit=EXPORT_IMAGES)
    ref32, ref64 = reference_and_floor(model, x, lab)
    floor = rel_max_error(ref32, ref64)
    run = runner or _cached_levels(lab, path, x.numpy(), ortrt.ort_runner(path, x.numpy(), threads=lab.settings.threads))
    with in_phase(lab, "evaluation"):  # the file at each optimization level (a failure's bisection too)
        ortrt.check_optimizations_keep_function(run, record, tolerance=numerics_tolerance(floor), floor=floor,
                                                 label=label, where=str(path))


def _cached_levels(lab, path: Path, x: np.ndarray, run: ortrt.Runner) -> ortrt.Runner:
    """``run`` with the two levels every check compares read from disk (``cached_outputs``); a
    failure's bisection, with transformers disabled, runs the file."""
    def at(optimization: str, disabled=()) -> np.ndarray:
        if disabled:
            return run(optimization, disabled)
        return cached_outputs(lab, path, x, f"ORT graph optimization {optimization}", lambda: run(optimization, ()))

    return at
