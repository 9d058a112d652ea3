"""fp16 ONNX within tolerance (harness/export/fp16.py): the converted file of repvgg_a0 passes;
planted defects (one conv channel or one conv's weight scaled by 1% after conversion) fail,
naming the measurement, the floor and the converter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _kit import recorder
from onnx import numpy_helper

from harness.compare import CheckFailure
from harness.export import fp16
from harness.export.exporter import exported
from harness.lab import Lab, Settings

IMAGES = 8


@pytest.fixture(scope="module")
def files():
    lab = Lab(Settings(models=["repvgg_a0"], threads=1))
    card = lab.cards[0]
    x, _ = lab.inputs(card, "eval", limit=IMAGES)
    fp32 = exported(lab, card, opset=17).path
    return fp32, fp16.fp16_file(lab, fp32), x.numpy()


def _scaled(src: Path, dst: Path, conv: int, channel: int | None, factor: float = 1.01) -> Path:
    """The fp16 file with conv number ``conv``'s weight (one output channel, or all) scaled."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    node = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits][conv]
    init = inits[node.input[1]]
    w = numpy_helper.to_array(init).astype(np.float32)
    if channel is None:
        w *= factor
    else:
        w[channel] *= factor
    init.CopyFrom(numpy_helper.from_array(w.astype(np.float16), init.name))
    onnx.save(model, str(dst))
    return dst


def test_converted_file_passes_with_fp32_io(files):
    fp32, f16, x = files
    rec = recorder()
    fp16.check_fp16_onnx_within_tolerance(fp32, f16, x, rec, label="repvgg_a0")
    f = rec.figures
    assert f["fp16_io_types"] == "float -> float"
    assert 0 < f["fp16_rounding_floor"] < 1e-2 and f["fp16_rel_max_error"] <= f["fp16_tolerance"]
    assert f["fp16_top1_agreement"] == 1.0 and f["fp16_onnx_mb"] < 0.6 * fp32.stat().st_size / 2**20


@pytest.mark.parametrize("conv, channel", [(0, 0), (0, None), (11, None)],
                         ids=["first-conv-one-channel", "first-conv", "stage1-conv"])
def test_one_percent_weight_change_fails(files, tmp_path, conv, channel):
    fp32, f16, x = files
    bad = _scaled(f16, tmp_path / "bad.fp16.onnx", conv, channel)
    rec = recorder()
    with pytest.raises(CheckFailure) as e:
        fp16.check_fp16_onnx_within_tolerance(fp32, bad, x, rec, label="repvgg_a0")
    msg = str(e.value)
    assert msg.startswith("fp16 vs fp32 ONNX relative error of repvgg_a0 (ort, 8 images) = ")
    assert "x fp16 rounding floor" in msg and fp16.CONVERTER in msg and "a weight changed" in msg
    assert e.value.figures["fp16_error_over_floor"] > 1.5

