"""Issue 18, items 2 and 5: how a user's int8 file is judged. Arrays and a tiny net: fast.

- item 2: on the embedded default a user's file is judged on the photographs (its deployment
  domain), every kind is reported with its own noise floor, and a departure confined to the
  drawn and generated kinds is a line, not a failure; the suite's own files (calibrated on every
  kind) and every file under --imagenet are judged on every image;
- item 5: a QOperator file (quantize_static's other format) is not "not a QDQ int8 model": the
  layer check does not apply to it and says why, while a float file given as int8 still fails.

The same rules on real files of a zoo model, made with quantize_static: tests/tools/test_ort_quantize_tool.py.
"""
from __future__ import annotations

import types
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _kit import recorder
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from harness import data
from harness.compare import CheckFailure, Inconclusive
from harness.data import IMAGENET_KIND, PHOTO_KINDS, SOURCE_KINDS, SYNTHETIC_KIND, ImageSet, Sample
from harness.quant import checks as qc
from harness.testing import FakeLab

# --- the kinds of the embedded set ----------------------------------------------------------


def test_every_embedded_image_has_a_source_kind_and_the_photographs_are_72_of_200():
    ev = data.embedded("eval", 200)
    kinds = Counter(s.kind for s in ev.samples)
    assert set(kinds) <= set(SOURCE_KINDS) and "" not in kinds
    photos = sum(n for k, n in kinds.items() if k in PHOTO_KINDS)
    # the counts issue 18 reports: 72 photos, 48 graphics, 80 synthetic 1/f textures
    assert (photos, kinds["graphic"], kinds[SYNTHETIC_KIND]) == (72, 48, 80)
    assert "graphic" not in PHOTO_KINDS and SYNTHETIC_KIND not in PHOTO_KINDS
    # every kind is still dealt to both splits (the calibration covers what evaluation shows)
    assert set(Counter(s.kind for s in data.embedded("calib", 200).samples)) == set(kinds)


def test_imagenet_images_are_photographs(tmp_path):
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a.png")
    (tmp_path / "val_label.txt").write_text("a.png 3\n")
    (s,) = data.imagenet(tmp_path).samples
    assert s.kind == IMAGENET_KIND and s.kind in PHOTO_KINDS


# --- the verdict per kind (item 2) ----------------------------------------------------------

KINDS = ["colour photo"] * 24 + ["grey photo"] * 24 + ["texture"] * 24 + ["graphic"] * 48 + [SYNTHETIC_KIND] * 80


def _logits(n=len(KINDS), classes=1000, distinct=60, seed=0):
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 3, size=classes)
    protos = rng.normal(0, 1, size=(distinct, classes))
    return (common + 2.0 * protos[rng.integers(0, distinct, size=n)] + 0.5 * rng.normal(size=(n, classes)))


def _moved(fp32, scale_of_kind: dict[str, float], seed):
    """fp32 plus Gaussian noise whose size depends on the image's kind (0.3: within the floor)."""
    rng = np.random.default_rng(seed)
    scale = np.array([scale_of_kind.get(k, 0.3) for k in KINDS])[:, None]
    return fp32 + scale * rng.normal(size=fp32.shape)


def _lab(kinds=KINDS, real=False):
    samples = [Sample(f"{k}#{i}", f"{k}#{i}", lambda: None, kind=k) for i, k in enumerate(kinds)]
    return FakeLab(images={"eval": ImageSet(samples, "embedded:eval")}, uses_real_data=real,
                   inputs=lambda card, split, limit: (None, samples))


def _subject(domain):
    return qc.Subject(Path("user.int8.onnx"), Path("model.onnx"), "manifest int8_onnx user.int8.onnx of m",
                      domain=domain)


def _judge(domain, int8, kinds=KINDS, fp32=None):
    fp32 = _logits() if fp32 is None else fp32
    rec = recorder()
    qc.judge_label_free_by_kind(_lab(kinds), None, _subject(domain), rec, fp32, int8, _moved(fp32, {}, 2),
                                "user.int8.onnx vs fp32", explain=lambda: "")
    return rec


OUT_OF_DOMAIN = {"graphic": 4.0, SYNTHETIC_KIND: 4.0}  # a file never calibrated on these kinds


def test_a_user_file_departing_only_on_graphics_and_textures_passes_with_a_line_saying_so():
    fp32 = _logits()
    rec = _judge(PHOTO_KINDS, _moved(fp32, OUT_OF_DOMAIN, 1), fp32=fp32)
    assert rec["eval_images"] == 72 and rec["out_of_domain_images"] == 128
    assert rec["judged_kinds"] == "photographs (colour photo, grey photo, texture)"
    per_kind = rec["int8_by_source_kind"]
    assert list(per_kind) == ["colour photo", "grey photo", "texture", "graphic", SYNTHETIC_KIND]
    assert [v["in_domain"] for v in per_kind.values()] == [True, True, True, False, False]
    assert per_kind["graphic"]["cosine_distance_vs_floor"] > 5 * per_kind["texture"]["cosine_distance_vs_floor"]
    line = rec["out_of_domain_departure"]
    assert "only on kinds outside its deployment domain" in line and "where it is within the floor" in line
    assert "graphic (48 images)" in line and f"{SYNTHETIC_KIND} (80 images)" in line
    assert "colour photo (24 images)" not in line and "judged on photographs (colour photo" in line


def test_the_same_departure_fails_a_file_judged_on_every_kind():
    """The rule applies to a user's file only: the suite's own files are calibrated on every kind."""
    fp32 = _logits()
    with pytest.raises(CheckFailure) as e:
        _judge(None, _moved(fp32, OUT_OF_DOMAIN, 1), fp32=fp32)
    assert e.value.figures["eval_images"] == len(KINDS)
    assert "judged on the" not in str(e.value)


def test_a_user_file_departing_on_photographs_fails_naming_the_domain_and_each_kind():
    fp32 = _logits()
    with pytest.raises(CheckFailure) as e:
        _judge(PHOTO_KINDS, _moved(fp32, {"colour photo": 4.0, "grey photo": 4.0, "texture": 4.0}, 1), fp32=fp32)
    msg = str(e.value)
    assert "judged on the 72 eval images that are photographs (colour photo, grey photo, texture)" in msg
    assert "+-2 grey levels of input noise" in msg
    assert "per kind: colour photo (24 images): agreement" in msg and "graphic (48 images)" in msg
    assert e.value.figures["eval_images"] == 72


def test_flips_of_a_judged_part_keep_their_positions_in_the_eval_set():
    fp32 = _logits()
    with pytest.raises(CheckFailure) as e:
        _judge(PHOTO_KINDS, _moved(fp32, {"texture": 8.0}, 1), fp32=fp32)
    idx = e.value.inputs["int8_flip_index"]
    assert len(idx) and all(KINDS[i] in PHOTO_KINDS for i in idx)
    assert any(KINDS[i] == "texture" for i in idx)


def test_no_photograph_in_the_eval_set_is_inconclusive_and_failing():
    kinds = ["graphic"] * 40 + [SYNTHETIC_KIND] * 40
    fp32 = _logits(len(kinds))
    rec = recorder()
    with pytest.raises(Inconclusive) as e:
        qc.judge_label_free_by_kind(_lab(kinds), None, _subject(PHOTO_KINDS), rec, fp32, fp32, fp32 + 0.1,
                                    "w", explain=lambda: "")
    assert e.value.failing and "none of the 80 eval images is a photograph" in str(e.value)


def test_the_domain_is_photographs_for_a_user_file_on_embedded_data_only():
    embedded, imagenet = _lab(), _lab(real=True)
    assert qc.domain_for(embedded, user_file=True) == PHOTO_KINDS
    assert qc.domain_for(embedded, user_file=False) is None  # the suite's own file
    assert qc.domain_for(imagenet, user_file=True) is None  # --imagenet: every image is in domain


# --- QOperator files (item 5) -----------------------------------------------------------------

def _tiny_net(path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.normal(size=(8, 3, 3, 3)) / 5).astype(np.float32), "w1")
    fc = numpy_helper.from_array((rng.normal(size=(8, 10)) / 3).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("GlobalAveragePool", ["r1"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], [w1, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """fp32 and its int8 copies by quantize_static, QDQ and QOperator."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("tiny")
    x = np.random.default_rng(1).uniform(-2, 2, size=(8, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x}])

        def get_next(self):
            return next(self.batches, None)

    out = {"fp32": folder / "tiny.onnx", "x": x}
    _tiny_net(out["fp32"])
    for fmt in ("QDQ", "QOperator"):
        out[fmt] = folder / f"tiny.{fmt}.onnx"
        quantize_static(str(out["fp32"]), str(out[fmt]), Reader(), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return out


def _layer_check(tiny, int8: Path, tmp_path):
    lab = FakeLab(tmp_path, inputs=torch.from_numpy(tiny["x"]))
    card = types.SimpleNamespace(id="tiny")
    subject = qc.Subject(int8, tiny["fp32"], f"manifest int8_onnx {int8.name} of tiny", float_for_report=tiny["fp32"])
    rec = recorder()
    return qc.check_layer_sqnr(card, lab, rec, "percentile", subject=subject), rec


def test_the_layer_check_does_not_apply_to_a_qoperator_file_and_says_why(tiny, tmp_path):
    reason, rec = _layer_check(tiny, tiny["QOperator"], tmp_path)
    assert reason and "QOperator int8 file (QLinearConv" in reason and "test_int8_matches_fp32 judges" in reason
    assert rec["int8_format"] == "QOperator" and "not a QDQ int8 model" not in reason


def test_the_layer_check_still_judges_a_qdq_file(tiny, tmp_path):
    reason, rec = _layer_check(tiny, tiny["QDQ"], tmp_path)
    assert reason is None and rec["qdq_activation_pairs"] > 0 and rec["int8_format"] == "QDQ"


def test_a_float_file_given_as_int8_still_fails_the_layer_check(tiny, tmp_path):
    with pytest.raises(CheckFailure) as e:
        _layer_check(tiny, tiny["fp32"], tmp_path)
    assert "not an int8 model" in str(e.value) and "tiny.onnx" in str(e.value)
