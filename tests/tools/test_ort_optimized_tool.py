"""ONNX Runtime's optimized-model file (``SessionOptions.optimized_model_filepath``): what ORT
writes after its graph optimizations computes the model and passes on ORT: basic and extended
(onnxruntime 1.32 on repvgg_a0: plain ONNX ops, the identity-branch BatchNormalization nodes
kept), and all (ORT's NCHWc layout ops, ``com.microsoft.nchwc``: a file for this host only, as
ORT warns when it writes it)."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest

from harness.export import checks as exportchecks
from harness.export.exporter import exported
from harness.testing import Recorder

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@pytest.mark.parametrize("level", list(LEVELS))
def test_ort_optimized_model_file_passes(tools_lab, repvgg, tmp_path, level):
    src = exported(tools_lab, repvgg.card, opset=17).path
    path = tmp_path / f"repvgg_a0.ort-{level}.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    so.optimized_model_filepath = str(path)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    assert path.is_file()
    domains = {n.domain for n in onnx.load(str(path)).graph.node}
    if level == "all":
        assert "com.microsoft.nchwc" in domains  # ORT's blocked layout: the file runs on ORT (this host) only
    rec = Recorder()
    exportchecks.check_matches_reference(path, repvgg.model, repvgg.x, rec, label=f"ORT optimized ({level})")
    assert rec.figures["rel_max_error"] <= rec.figures["tolerance"]
