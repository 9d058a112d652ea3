"""ORT's graph optimizer vs none (harness/runtimes/ort.py): the check fails when a transformer
changes the function, and the bisection over ``disabled_optimizers`` names it."""
from __future__ import annotations

import numpy as np
import pytest
from _kit import recorder as _recorder

from harness.compare import CheckFailure
from harness.runtimes import ort as ortopt


def _planted_runner(culprit: str | None, error: float = 1e-3, calls=None):
    """A fake ORT: optimized output differs from unoptimized by ``error`` (relative) unless
    ``culprit`` is among the disabled transformers (None: no transformer is to blame)."""
    base = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32)

    def run(optimization, disabled=()):
        if calls is not None:
            calls.append((optimization, tuple(disabled)))
        if optimization == "none" or (culprit is not None and culprit in disabled):
            return base
        return base + error * np.abs(base).max()

    return run


@pytest.mark.parametrize("culprit", ["ConvBNFusion", "NchwcTransformer", "QDQSelectorActionTransformer"])
def test_a_transformer_that_changes_the_function_is_named(culprit):
    calls = []
    rec = _recorder()
    with pytest.raises(CheckFailure) as e:
        ortopt.check_optimizations_keep_function(_planted_runner(culprit, calls=calls), rec, tolerance=1e-5,
                                                 floor=1e-6, label="planted", where="model.onnx")
    msg = str(e.value)
    assert f"ORT graph transformer {culprit} changes the function" in msg
    assert "disabled_optimizers" in msg and "[model.onnx]" in msg
    assert rec.figures["ort_transformer_responsible"] == culprit
    assert len(calls) < 2 * len(ortopt.ORT_TRANSFORMERS)  # halving, not one session per name


def test_a_difference_no_transformer_explains_is_blamed_on_kernels():
    with pytest.raises(CheckFailure) as e:
        ortopt.check_optimizations_keep_function(_planted_runner(None), _recorder(), tolerance=1e-5, floor=1e-6,
                                                 label="planted", where="model.onnx")
    assert "kernels the optimization level selects" in str(e.value)


def test_optimizations_within_tolerance_pass_and_record_the_error():
    rec = _recorder()
    ortopt.check_optimizations_keep_function(_planted_runner("ConvBNFusion", error=1e-7), rec, tolerance=1e-5,
                                             floor=1e-6, label="planted", where="model.onnx")
    assert 0 < rec.figures["optimized_vs_unoptimized_rel_error"] <= 1e-5


def test_real_ort_accepts_the_transformer_names_and_disabling_them_keeps_the_output(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in
          ((rng.uniform(0.5, 2, 4), "g"), (rng.normal(size=4), "b"), (rng.normal(size=4), "m"), (rng.uniform(0.5, 2, 4), "v"))]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 8, 8])], [w, *bn])
    path = tmp_path / "convbn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    run = ortopt.ort_runner(path, rng.normal(size=(2, 3, 8, 8)).astype(np.float32), threads=1)
    rec = _recorder()
    ortopt.check_optimizations_keep_function(run, rec, tolerance=1e-5, floor=1e-7, label="conv+bn", where=str(path))
    disabled = run("all", ortopt.ORT_TRANSFORMERS)
    assert np.allclose(disabled, run("none", ()), rtol=0, atol=1e-6)
