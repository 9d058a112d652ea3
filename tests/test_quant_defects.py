"""Planted defects in real int8 models: each check of suites/test_quant.py must fail on them.

- an int8 model calibrated on flat grey images (a calibration set that is not images):
  the noise-floor criterion must fail, while the same model calibrated properly passes;
- a degenerate fp32 model (timm's raw init, one class for every image): inconclusive,
  failing, never passed, although its int8 copy "agrees" with it;
- a scale tampered in one QDQ pair (given as the manifest's ``int8_onnx``): the layer
  check must fail naming that tensor and its scale, while the untampered file passes.

The model is hrnet_w18_small_v1 (the smoke tier's cheapest to quantize: 1.5 GFLOPs, 13 s
of calibration for MinMax); artifacts go through the lab's cache, so the suite reuses them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from harness import quantchecks as qc
from harness import quantize as qz
from harness.compare import CheckFailure, Inconclusive
from harness.export import exported
from harness.lab import Lab, Settings
from harness.models import create_architecture

MODEL = "hrnet_w18_small_v1"


@pytest.fixture(scope="module")
def qlab(lab) -> Lab:
    """The session's lab when it runs on the embedded default, else a default one on the
    same cache: these tests are about the label-free path."""
    if lab.uses_real_data or lab.settings.artifacts:
        return Lab(Settings(cache_dir=lab.settings.cache_dir))
    return lab


@pytest.fixture(scope="module")
def card(qlab):
    return qlab.zoo[MODEL]


def _recorder():
    figures = {}

    def record(**kw):
        figures.update(kw)

    record.figures = figures
    return record


def flat_grey_images(card, levels=(16, 48, 80, 112, 144, 176, 208, 240, 128, 96)) -> np.ndarray:
    """Uniform grey images through the card's normalisation: what a broken calibration
    loader (blank frames, a decoding fallback) feeds the calibrator."""
    mean = np.asarray(card.preprocess.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(card.preprocess.std, np.float32).reshape(1, 3, 1, 1)
    grey = np.asarray(levels, np.float32).reshape(-1, 1, 1, 1) / 255.0
    size = card.input_size
    return np.ascontiguousarray(np.broadcast_to((grey - mean) / std, (len(levels), 3, size, size)), dtype=np.float32)


def test_flat_grey_calibration_fails_the_noise_floor_while_real_calibration_passes(qlab, card):
    good = _recorder()
    qc.check_int8_matches_fp32(qlab, card, "minmax", good)
    assert good.figures["mode"] == "noise-floor"

    flat = qz.quantized_result(qlab, card, "minmax", calib=flat_grey_images(card), calib_source="flat grey images")
    subject = qc.Subject(flat.path, qz.fp32_source(qlab, card), f"int8 (minmax, flat-grey calibration) {card.id}",
                         quant=flat, float_for_report=qz.preprocessed(qlab, qz.fp32_source(qlab, card)))
    bad = _recorder()
    with pytest.raises(CheckFailure) as e:
        qc.check_int8_matches_fp32(qlab, card, "minmax", bad, subject=subject)
    msg = str(e.value)
    assert "+-2 grey levels of input noise" in msg and str(flat.path) in msg
    assert "worst QDQ tensors" in msg  # the layer report names where it breaks
    figs = e.value.figures
    assert figs["cosine_distance_vs_floor"] > 2 * good.figures["cosine_distance_vs_floor"]


def test_degenerate_fp32_model_is_inconclusive_not_passed(qlab, card):
    raw = create_architecture(card)  # timm's init, no BN recalibration: one class for every image
    fp32 = exported(qlab, card, model=raw, tag="raw-init-degenerate").path
    calib = qz.calibration_inputs(qz.calibration_samples(qlab)[:20], card)
    res = qz.quantized_result(qlab, card, "minmax", fp32=fp32, calib=calib, calib_source="first 20 calibration images")
    subject = qc.Subject(res.path, fp32, f"int8 of raw-init {card.id}", quant=res)
    with pytest.raises(Inconclusive) as e:
        qc.check_int8_matches_fp32(qlab, card, "minmax", _recorder(), subject=subject)
    assert e.value.failing
    assert "degenerate fp32 model" in str(e.value)
    assert e.value.figures["fp32_distinct_top1"] < 10


def _tamper_scale(src: Path, dst: Path, factor: float) -> tuple[str, str]:
    """Multiply the scale of one mid-depth activation QDQ pair by ``factor``."""
    model = onnx.load(str(src))
    acts, _ = qc.qdq_pairs(model)
    tensor, _, scale = acts[len(acts) // 2]
    for init in model.graph.initializer:
        if init.name == scale:
            init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * factor).astype(np.float32), scale))
    onnx.save(model, str(dst))
    return tensor, scale


@pytest.mark.parametrize("factor", [16.0, 1 / 16], ids=["scale_x16_too_coarse", "scale_x1/16_clips"])
def test_tampered_qdq_scale_is_caught_and_named(qlab, card, tmp_path, factor):
    good = qz.quantized(qlab, card, "minmax")
    user = tmp_path / f"{card.id}.int8.onnx"
    tensor, scale = _tamper_scale(good, user, factor)
    manifest = tmp_path / "artifacts.toml"
    manifest.write_text(f'[models.{card.id}]\nint8_onnx = "{user.name}"\n')
    user_lab = Lab(Settings(artifacts=manifest, cache_dir=qlab.settings.cache_dir))
    user_lab._inputs = qlab._inputs  # same images, already preprocessed
    rec = _recorder()
    with pytest.raises(CheckFailure) as e:
        qc.check_layer_sqnr(user_lab, user_lab.zoo[card.id], "percentile", rec)
    msg = str(e.value)
    assert f"tensor '{tensor}'" in msg and f"scale '{scale}'" in msg and str(user) in msg
    assert e.value.figures["worst_activations"][0]["tensor"] == tensor


def test_untampered_int8_model_keeps_every_pair_above_the_sqnr_floor(qlab, card):
    subject = qc.Subject(qz.quantized(qlab, card, "minmax"), qz.fp32_source(qlab, card), f"int8 (minmax) {card.id}",
                         float_for_report=qz.preprocessed(qlab, qz.fp32_source(qlab, card)))
    rec = _recorder()
    qc.check_layer_sqnr(qlab, card, "minmax", rec, subject=subject)
    assert rec.figures["min_activation_sqnr_db"] >= 20 and rec.figures["qdq_activation_pairs"] > 100


def test_labelled_path_fails_int8_that_loses_correct_predictions_and_says_it_widened(qlab, card, tmp_path):
    """--imagenet + --weights-dir: top-1/top-5 on labels. The folder holds 30 embedded eval
    images as PNG, labelled with the fp32 model's own predictions (fp32 top-1 = 100% by
    construction; 10 go to calibration), so int8 top-1 is its agreement with fp32 (~80%):
    below 99% of fp32 even after widening by the binomial half-width of ~20 images."""
    from PIL import Image
    from safetensors.torch import save_file

    from harness import runtime as rt

    samples = qlab.images("eval").samples[::7][:30]
    (tmp_path / "val").mkdir()
    for i, s in enumerate(samples):
        s.load().save(tmp_path / "val" / f"ILSVRC2012_val_{i + 1:08d}.png")
    x = qz.calibration_inputs(samples, card)
    labels = rt.run(rt.session(qz.fp32_source(qlab, card)), x).argmax(axis=1)
    (tmp_path / "val_label.txt").write_text(
        "".join(f"ILSVRC2012_val_{i + 1:08d}.png {int(y)}\n" for i, y in enumerate(labels)))
    weights = tmp_path / "weights"
    weights.mkdir()
    save_file({k: v.contiguous() for k, v in qlab.reference(card).state_dict().items()},
              str(weights / f"{card.id}.safetensors"))
    real = Lab(Settings(imagenet=tmp_path, weights_dir=weights, calib_images=10, cache_dir=qlab.settings.cache_dir))
    real_card = real.zoo[card.id]
    assert qc.has_labels(real, real_card)
    rec = _recorder()
    with pytest.raises(CheckFailure) as e:
        qc.check_int8_matches_fp32(real, real_card, "minmax", rec)
    msg = str(e.value)
    assert rec.figures["mode"] == "labelled" and rec.figures["fp32_top1"] == 100.0
    assert "int8 top-1 of" in msg and "points below fp32" in msg
    n = rec.figures["eval_images"]
    assert n == len(real.images("eval")) and e.value.figures["binomial_widening_points"] > 0
    assert f"only {n} of 50000 validation images" in msg  # the widening is declared
