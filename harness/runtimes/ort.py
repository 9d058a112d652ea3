"""ONNX Runtime: the CPU execution provider, CUDA and TensorRT when this onnxruntime has them.

Everything that is ORT's and only ORT's lives here: session options (graph optimization
level, ``disabled_optimizers``, intra-op spin-waiting), the execution providers, and the
graph-optimizer bisection (below). QDQ quantization tooling stays in ``harness/quant`` (it is
ORT's tooling too, and the int8 float simulation runs through :func:`session` here).

``CPU``/``CUDA``/``TENSORRT`` are the runtime objects of the protocol (``harness/runtimes/base.py``);
:func:`session`/:func:`run` are the raw ``InferenceSession`` helpers the ORT-only code uses.

Graph optimizer (was harness/export/ortopt.py):
ONNX Runtime's graph optimizer against the unoptimized graph, and which transformer is to blame.

The same ONNX file runs through ORT's graph transformers (constant folding, conv+BN and
conv+activation fusion, NCHWc layout, QDQ -> QLinear fusion, ...) at ``ORT_ENABLE_ALL`` and
through none of them at ``ORT_DISABLE_ALL``. The optimizations are meant to keep the function;
when they do not, the finding is ORT's (or the file's op that a fusion mis-reads), not the
export's. :func:`bisect_transformers` narrows a difference down to the transformers whose
disabling (``InferenceSession(..., disabled_optimizers=[...])``) restores the unoptimized
output, by halving the candidate list.

The candidate names are ORT's registered transformer and rewrite-rule names (unknown names are
ignored by ORT, so a name a future version drops costs nothing).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..compare import CheckFailure, message, rel_max_error
from ..errors import InputError
from ..onnxfile import check_external_data
from .base import BaseSession, fixed_batch_of, is_fp32

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"


def providers(prefer_gpu: bool = False) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    order = (["TensorrtExecutionProvider", "CUDAExecutionProvider"] if prefer_gpu else []) + ["CPUExecutionProvider"]
    return [p for p in order if p in available]


def session(path: Path | str, threads: int | None = None, provider: str = CPU_EP,
            optimization: str = "all", spinning: bool = True, disabled_optimizers: Sequence[str] = (),
            provider_options: dict[str, Any] | None = None, in_listed_order: bool = False) -> Any:
    """An InferenceSession for a checked file. ``threads``: intra-op threads (None = ORT default).
    ``in_listed_order`` (float simulations only, ``optimization="none"``): run the nodes in the
    order the file lists them (ORT's priority-based order, all priorities equal, picks the lowest
    index among the ready nodes), so a graph written to free its tensors early does.
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
    if in_listed_order:
        if optimization != "none":
            raise ValueError("in_listed_order needs optimization='none': fusions rewrite the listed graph")
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        # ORT's QDQ pass gives every consumer of a DequantizeLinear its own copy even at
        # ORT_DISABLE_ALL, appended at the end of the list: a chain waiting on such a copy ran
        # last, and a resnest269 comparison graph held 1.8 GB instead of 0.09 GB. The copies
        # compute the same values; without fusions nothing else of the pass applies.
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.log_severity_level = 3
    eps: list[Any] = [(provider, dict(provider_options)) if provider_options else provider]
    if provider != CPU_EP:
        eps.append(CPU_EP)
    try:
        if disabled_optimizers:
            return ort.InferenceSession(str(path), sess_options=so, providers=eps,
                                        disabled_optimizers=list(disabled_optimizers))
        return ort.InferenceSession(str(path), sess_options=so, providers=eps)
    except Exception as e:
        raise InputError(path, f"ONNX Runtime cannot load it ({type(e).__name__}: {str(e)[:300]})",
                         fix="check the file with onnx.checker.check_model; re-export if needed") from None


def run(sess: Any, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """First output of the session on ``x`` (NCHW float32), optionally in batches."""
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not batch_size or batch_size >= len(x):
        return np.asarray(sess.run(None, {name: x})[0])
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


# --- the protocol ---------------------------------------------------------------------------

class OrtSession(BaseSession):
    def __init__(self, inner: Any, runtime: str, precision: str, settings: str, fixed_batch: int | None):
        self.inner = inner  # the InferenceSession (ORT-only code may use it)
        self.runtime = runtime
        self.effective_precision = precision
        self.settings = settings
        self.fixed_batch = fixed_batch
        self.input_name = inner.get_inputs()[0].name
        # the harness feeds float32 images; a check that means to feed a file its declared
        # float16 input sets this (harness/export/fp16.py)
        self.input_dtype: Any = np.float32

    def run(self, batch: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(batch, dtype=self.input_dtype)
        return np.asarray(self.inner.run(None, {self.input_name: feed})[0])


class OrtRuntime:
    """ONNX Runtime on one execution provider (the CPU EP as fallback for unsupported nodes)."""

    exposes_intermediates = True
    runs_module = False

    def __init__(self, name: str, provider: str = CPU_EP):
        self.name = name
        self.provider = provider
        self.device = "CPU" if provider == CPU_EP else "GPU"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return False, f"onnxruntime is not installed ({e})"
        if self.provider not in ort.get_available_providers():
            return False, (f"this onnxruntime ({ort.__version__}) has no {self.provider} "
                           f"(it has {', '.join(ort.get_available_providers())})")
        return True, ""

    def supports(self, precision: str, batch: int | None = None) -> tuple[bool, str]:
        if precision in ("fp32", "int8") or (precision == "fp16" and self.provider == TENSORRT_EP):
            return True, ""
        return False, f"{self.name} runs fp32 and int8 files" + (" (fp16 on TensorRT only)" if precision == "fp16" else "")

    def prepare(self, onnx_path: Path | str, threads: int | None = None, precision: str = "fp32", *, model: Any = None,
                optimization: str = "all", spinning: bool = True, disabled_optimizers: Sequence[str] = ()) -> OrtSession:
        path = Path(onnx_path)
        options: dict[str, Any] = {}
        effective = "fp32"
        if self.provider == TENSORRT_EP and precision == "fp16":
            options["trt_fp16_enable"] = True
            effective = "fp16"
        elif precision == "int8":
            effective = "int8" if optimization != "none" else "fp32 (QDQ float simulation)"
        elif not is_fp32(precision) and precision != "default":
            raise ValueError(f"{self.name} cannot be asked for {precision} arithmetic")
        inner = session(path, threads=threads, provider=self.provider, optimization=optimization, spinning=spinning,
                        disabled_optimizers=disabled_optimizers, provider_options=options)
        level = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "all": "ORT_ENABLE_ALL"}[optimization]
        settings = (f"onnxruntime {self.provider.removesuffix('ExecutionProvider')} EP, {effective}, {level}"
                    + (f", {threads} threads" if threads else ""))
        return OrtSession(inner, self.name, effective, settings, fixed_batch_of(path))


CPU = OrtRuntime("ort", CPU_EP)
CUDA = OrtRuntime("ort-cuda", CUDA_EP)
TENSORRT = OrtRuntime("ort-trt", TENSORRT_EP)
GPU_PRECISIONS = {TENSORRT_EP: ("fp32", "fp16"), CUDA_EP: ("fp32",)}


def gpu_cases() -> list[tuple[str, str]]:
    """(provider, precision) pairs this onnxruntime can run on a GPU."""
    available = set(providers(prefer_gpu=True))
    return [(p, prec) for p, precs in GPU_PRECISIONS.items() if p in available for prec in precs]


def runtime_for_provider(provider: str) -> OrtRuntime:
    return {CPU_EP: CPU, CUDA_EP: CUDA, TENSORRT_EP: TENSORRT}[provider]


def gpu_runtime_cases() -> list[tuple[str, str]]:
    """(runtime name, precision) of the GPU execution providers this onnxruntime has."""
    return [(runtime_for_provider(p).name, prec) for p, prec in gpu_cases()]


# --- graph optimizer: all vs none, and which transformer is to blame --------------------------

# onnxruntime/core/optimizer/graph_transformer_utils.cc (level 1-3, CPU EP), plus rewrite rules
ORT_TRANSFORMERS: tuple[str, ...] = (
    "ConstantFolding", "CommonSubexpressionElimination", "ConstantSharing", "NoopElimination",
    "EliminateIdentity", "EliminateSlice", "EliminateDropout", "UnsqueezeElimination", "ExpandElimination",
    "CastElimination", "FuseReluClip", "GemmTransposeFusion", "NotWhereFusion", "DivMulFusion",
    "ConvAddFusion", "ConvBNFusion", "ConvMulFusion", "PadFusion", "MatMulAddFusion", "ReshapeFusion",
    "TransposeOptimizer", "ConvActivationFusion", "GemmActivationFusion", "GemmSumFusion", "MatMulScaleFusion",
    "MatmulTransposeFusion", "BiasGeluFusion", "GeluFusion", "FastGeluFusion", "QuickGeluFusion",
    "LayerNormFusion", "SimplifiedLayerNormFusion", "SkipLayerNormFusion", "AttentionFusion",
    "EmbedLayerNormFusion", "BiasSoftmaxFusion", "IsInfReduceSumFusion", "DoubleQDQPairsRemover",
    "QDQPropagationTransformer", "QDQS8ToU8Transformer", "QDQSelectorActionTransformer",
    "QDQFinalCleanupTransformer", "EnsureUniqueDQForNodeUnit", "ReluQuantFusion", "MatMulIntegerToFloatFusion",
    "DynamicQuantizeMatMulFusion", "NchwcTransformer", "NhwcTransformer", "IdenticalChildrenConsolidation",
)

Runner = Callable[[str, Sequence[str]], np.ndarray]  # (optimization level, disabled names) -> logits


def ort_runner(path: Path, x: np.ndarray, threads: int | None = None, batch_size: int = 8) -> Runner:
    def at(optimization: str, disabled: Sequence[str] = ()) -> np.ndarray:
        sess = session(path, threads=threads, optimization=optimization, disabled_optimizers=disabled)
        return run(sess, x, batch_size=batch_size)

    return at


def bisect_transformers(differs: Callable[[Sequence[str]], bool],
                        candidates: Sequence[str] = ORT_TRANSFORMERS) -> list[str] | None:
    """The smallest run of ``candidates`` found by halving whose disabling makes ``differs``
    false; None when disabling all of them does not (the difference is not a named transformer's:
    the kernels an optimization level selects, for example)."""
    cands = list(candidates)
    if differs(cands):
        return None
    while len(cands) > 1:
        mid = len(cands) // 2
        first, second = cands[:mid], cands[mid:]
        if not differs(first):
            cands = first
        elif not differs(second):
            cands = second
        else:  # culprits in both halves: this set is as small as halving gets
            break
    return cands


def check_optimizations_keep_function(run: Runner, record: Callable[..., None], *, tolerance: float, floor: float,
                                      label: str,
                                      where: str) -> None:
    """All graph optimizations vs none on the same file, within ``tolerance`` (scale-relative
    max error, the export suite's k x fp64 floor); on failure the transformer is named."""
    plain = run("none", ())
    full = run("all", ())
    err = rel_max_error(full, plain)
    figures = dict(optimized_vs_unoptimized_rel_error=err, tolerance=tolerance, noise_floor_fp64=floor,
                   n_images=len(plain))
    record(**figures)
    if err <= tolerance:
        return

    def differs(disabled: Sequence[str]) -> bool:
        return rel_max_error(run("all", disabled), plain) > tolerance

    culprits = bisect_transformers(differs)
    if culprits is None:
        cause = ("disabling every named ORT graph transformer does not restore the unoptimized output: "
                 "the difference comes from the kernels the optimization level selects")
    else:
        fixed = rel_max_error(run("all", culprits), plain)
        record(ort_transformer_responsible=", ".join(culprits), rel_error_with_it_disabled=fixed)
        cause = (f"ORT graph transformer {', '.join(culprits)} changes the function (with it disabled, "
                 f"error {fixed:.3g}); run with InferenceSession(..., disabled_optimizers={culprits!r}) "
                 "and report it to onnxruntime with this file")
    raise CheckFailure(message(f"max|optimized - unoptimized| / max|unoptimized| of {label} on {len(plain)} images "
                               "(ORT_ENABLE_ALL vs ORT_DISABLE_ALL)", f"{err:.3g}",
                               f"<= {tolerance:.3g} (the export tolerance; fp64 floor {floor:.3g})", where, cause=cause),
                       figures)


def model_session(model_proto: Any, threads: int | None = None) -> Any:
    """A raw CPU ``InferenceSession`` of an in-memory graph the harness built itself (the GEMM
    of the host's measured peaks, ``harness/latency/timing.py``): no file, nothing to guard."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_proto.SerializeToString(), so, providers=[CPU_EP])
