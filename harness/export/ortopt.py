"""ONNX Runtime's graph optimizer against the unoptimized graph, and which transformer is to blame.

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

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import runtime as rt
from ..compare import CheckFailure, message, rel_max_error

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
    def run(optimization: str, disabled: Sequence[str] = ()) -> np.ndarray:
        sess = rt.session(path, threads=threads, optimization=optimization, disabled_optimizers=disabled)
        return rt.run(sess, x, batch_size=batch_size)

    return run


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


def check_optimizations_keep_function(run: Runner, record, *, tolerance: float, floor: float, label: str,
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
