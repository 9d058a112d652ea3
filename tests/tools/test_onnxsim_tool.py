"""onnxsim (``onnxsim.simplify``): a simplified export computes the same function and passes."""
from __future__ import annotations

import onnx
import pytest

from harness.export import checks as exportchecks
from harness.export.exporter import exported
from harness.onnxfile import load_checked
from harness.testing import Recorder

onnxsim = pytest.importorskip("onnxsim", reason="onnxsim (pip install onnxsim)")


def test_simplified_export_passes(tools_lab, repvgg, tmp_path):
    src = exported(tools_lab, repvgg.card, opset=17).path
    simplified, ok = onnxsim.simplify(load_checked(src))
    assert ok, "onnxsim could not validate its own output"
    path = tmp_path / "repvgg_a0.sim.onnx"
    onnx.save(simplified, str(path))
    rec = Recorder()
    exportchecks.check_matches_reference(path, repvgg.model, repvgg.x, rec, label="onnxsim")
    assert rec.figures["rel_max_error"] <= rec.figures["tolerance"]
    exportchecks.check_batch_consistency(path, repvgg.x, Recorder(), label="onnxsim", model=repvgg.model)
