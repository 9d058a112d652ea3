"""The int8 criteria on their own: noise floor, degenerate models, labelled accuracy with
the binomial widening, the calibration reader, the calibration split. Arrays only: fast.

The planted defects in real quantized models are in tests/test_quant_defects.py.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from harness import figures as figure_contract
from harness.compare import CheckFailure, Inconclusive, binomial_halfwidth
from harness.data import ImageSet, Sample
from harness.quant import checks as qc
from harness.quant import quantize as qz
from harness.testing import FakeLab
from harness.tolerances import tolerance

STD = (0.229, 0.224, 0.225)


def _logits(n=200, classes=1000, distinct=40, seed=0):
    """Diverse random logits: a shared mean vector plus per-image structure."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 3, size=classes)
    protos = rng.normal(0, 1, size=(distinct, classes))
    which = rng.integers(0, distinct, size=n)
    return (common + 2.0 * protos[which] + 0.5 * rng.normal(size=(n, classes))).astype(np.float32)


def _perturb(x, scale, seed):
    return (x + scale * np.random.default_rng(seed).normal(size=x.shape)).astype(np.float32)


# --- noise floor ------------------------------------------------------------------------

def test_grey_level_noise_is_integer_levels_through_the_cards_std():
    x = np.zeros((2, 3, 8, 8), np.float32)
    noisy = qc.grey_level_noise(x, STD, levels=2, seed=0)
    levels = noisy * 255.0 * np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
    assert np.allclose(levels, np.round(levels), atol=1e-3)
    assert set(np.unique(np.round(levels)).astype(int)) == {-2, -1, 0, 1, 2}


def test_centred_cosine_ignores_the_shared_logit_vector():
    ref = _logits()
    # the same shared vector with unrelated per-image parts: raw cosine stays high, centred does not
    other = _logits(seed=1)
    other += ref.mean(0) - other.mean(0)
    raw = float(np.mean(qc.cosine_rows(ref, other)))
    assert raw > 0.5
    assert qc.centred_cosine(ref, other) < 0.2


def test_label_free_passes_an_int8_error_within_the_floor():
    fp32 = _logits()
    m = qc.label_free_figures(fp32, _perturb(fp32, 0.3, 1), _perturb(fp32, 0.3, 2))
    figs = qc.judge_label_free(m, subject="int8 test", where="synthetic")
    assert figs["agreement_vs_floor"] > 0.9


def test_label_free_fails_a_broken_int8_model_naming_the_floor():
    fp32 = _logits()
    m = qc.label_free_figures(fp32, _perturb(fp32, 5.0, 1), _perturb(fp32, 0.3, 2))
    with pytest.raises(CheckFailure) as e:
        qc.judge_label_free(m, subject="int8 test", where="synthetic.onnx",
                            explain=lambda: "worst QDQ tensors: conv7")
    msg = str(e.value)
    assert "but should be" in msg and "[synthetic.onnx]" in msg
    assert "+-2 grey levels" in msg and "conv7" in msg
    assert e.value.figures["top1_agreement"] < e.value.figures["noise_floor_top1_agreement"]


def _one_class(fp32):
    """The same logits with one class dominating: every image predicts class 7."""
    out = fp32.copy()
    out[:, 7] += 1000.0
    return out


def test_few_classes_judges_on_cosine_and_reports_agreement_only():
    # a model predicting one class: int8 "agrees" 100% whatever it does, so agreement is not
    # judged; the centred cosine still sees the logits move (issue 15: judge what can be judged)
    fp32 = _logits()
    broken = qc.label_free_figures(_one_class(fp32), _one_class(_perturb(fp32, 5.0, 1)),
                                   _one_class(_perturb(fp32, 0.3, 2)))
    assert broken.agreement == 1.0
    with pytest.raises(CheckFailure) as e:
        qc.judge_label_free(broken, subject="int8 test", where="synthetic")
    msg = str(e.value)
    assert "centred-logit cosine distance" in msg and "top-1 agreement /" not in msg
    assert e.value.figures["judged_on"].startswith("cosine") and "agreement_not_judged" in e.value.figures
    sound = qc.label_free_figures(_one_class(fp32), _one_class(_perturb(fp32, 0.3, 1)),
                                  _one_class(_perturb(fp32, 0.3, 2)))
    figs = qc.judge_label_free(sound, subject="int8 test", where="synthetic")
    assert figs["judged_on"].startswith("cosine") and figs["fp32_distinct_top1"] == 1
    # what the suite records on this pass (hrnet_w32/w40/w44, repvgg_b3g4 on the full tier) is declared
    figure_contract.validate(figs, strict=True)
    figure_contract.validate(e.value.figures, strict=True)


def test_fp32_that_ignores_its_input_is_inconclusive_and_failing():
    # nothing can be judged: fp32 gives the same logits under input noise (a constant output)
    fp32 = np.tile(_logits()[:1], (200, 1))
    m = qc.label_free_figures(fp32, _perturb(fp32, 0.3, 1), fp32.copy())
    with pytest.raises(Inconclusive) as e:
        qc.judge_label_free(m, subject="int8 test", where="synthetic")
    assert e.value.failing
    assert "do not respond" in str(e.value) and "neither top-1 agreement nor the logit cosine" in str(e.value)


# --- labelled accuracy ------------------------------------------------------------------

def _labelled(fp32_top1, int8_top1, n, full=False):
    return qc.Labelled(n, fp32_top1, fp32_top1 + 0.15, int8_top1, int8_top1 + 0.15, full_set=full)


def test_labelled_passes_within_mlperf_and_family_drop():
    figs = qc.judge_labelled(_labelled(0.724, 0.720, 49_000, full=True), "repvgg", subject="s", where="w")
    assert figs["binomial_widening_points"] == 0


def test_labelled_fails_the_published_repvgg_ptq_collapse():
    # QARepVGG: RepVGG-A0 72.4 -> 52.2 top-1 with plain PTQ
    with pytest.raises(CheckFailure) as e:
        qc.judge_labelled(_labelled(0.724, 0.522, 49_000, full=True), "repvgg", subject="int8 repvgg_a0", where="w")
    assert "20.20 points below fp32" in str(e.value)


def test_labelled_on_a_subset_widens_by_the_binomial_interval_and_says_so():
    n = 500
    widen = binomial_halfwidth(0.75, n)
    drop = tolerance("quant", "max_top1_drop_hrnet") / 100
    # just beyond the unwidened bound but inside the widened one: passes
    inside = 0.76 - drop - widen / 2
    figs = qc.judge_labelled(_labelled(0.76, inside, n), "hrnet", subject="s", where="w")
    assert figs["binomial_widening_points"] > 0
    with pytest.raises(CheckFailure) as e:
        qc.judge_labelled(_labelled(0.76, 0.76 - drop - 2 * widen, n), "hrnet", subject="s", where="w")
    assert f"only {n} of 50000 validation images" in str(e.value)


# --- calibration reader and plan --------------------------------------------------------

def test_reader_set_range_serves_only_that_range_in_equal_batches():
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    r = qz.ArrayCalibrationReader(x, batch=5)
    assert len(r) == 40
    r.set_range(10, 20)
    got = [b["input"][:, 0, 0, 0].tolist() for b in r]
    assert got == [list(range(10, 15)), list(range(15, 20))]
    assert r.get_next() is None


def test_calibration_plan_bounds_memory_and_divides_the_set():
    opts = qz.QuantOptions(stride_budget_mb=100)
    used, stride, batch = qz.calibration_plan(105, 30 * 2**20, opts)  # 30 MB per image -> 3 images per pass
    assert stride * 30 <= 100 and used % stride == 0 and stride % batch == 0 and used > 100
    used, stride, batch = qz.calibration_plan(100, 1 * 2**20, opts)
    assert (used, stride % batch) == (100, 0)


# --- calibration split ------------------------------------------------------------------

def _set(names, groups=None, labels=None, origin="x"):
    groups = groups or names
    labels = labels or [None] * len(names)
    return ImageSet([Sample(n, g, lambda: None, lab) for n, g, lab in zip(names, groups, labels)], origin)


def _SplitLab(calib, ev) -> FakeLab:
    return FakeLab(images={"calib": calib, "eval": ev}, settings=types.SimpleNamespace(threads=None))


def test_calibration_split_catches_eval_images_used_for_calibration():
    lab = _SplitLab(_set(["a", "b", "c"]), _set(["c", "d"]))
    with pytest.raises(CheckFailure) as e:
        qc.check_calibration_split(None, lab, lambda **k: None)
    assert "['c']" in str(e.value) and "flatters" in str(e.value)


def test_calibration_split_catches_views_of_one_photo_on_both_sides():
    lab = _SplitLab(_set(["coffee#0", "coffee#1"], ["coffee", "coffee"]), _set(["coffee#2"], ["coffee"]))
    with pytest.raises(CheckFailure) as e:
        qc.check_calibration_split(None, lab, lambda **k: None)
    assert "coffee" in str(e.value)


def test_calibration_split_requires_every_class_on_labelled_data():
    calib = _set([f"c{i}" for i in range(6)], labels=[0, 0, 1, 1, 2, 2])
    ev = _set([f"e{i}" for i in range(6)], labels=[0, 1, 2, 3, 4, 5])
    with pytest.raises(CheckFailure) as e:
        qc.check_calibration_split(None, _SplitLab(calib, ev), lambda **k: None)
    assert "classes represented" in str(e.value)
    good = _set([f"c{i}" for i in range(6)], labels=[0, 1, 2, 3, 4, 5])
    qc.check_calibration_split(None, _SplitLab(good, ev), lambda **k: None)
