"""The documented decisions of harness/preprocess/deploy.py (small images, alpha, EXIF, modes)
and planted defects for the any-image property check."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.compare import CheckFailure
from harness.preprocess import checks as pc
from harness.preprocess import deploy as dp
from harness.preprocess import images
from harness.zoo import Preprocess, load_zoo

ZOO = load_zoo()
PIPELINES = {cid: ZOO[cid].preprocess for cid in ("hrnet_w18_small_v1", "resnest50", "resnest269")}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalised(rgb) -> np.ndarray:
    return ((np.asarray(rgb, np.float64) / 255 - MEAN) / STD)[:, None, None]


@pytest.mark.parametrize("pid", PIPELINES)
@pytest.mark.parametrize("mode", images.IMAGE_MODES)
def test_every_mode_matches_reference(pid, mode):
    for w, h in ((1, 1), (5, 3), (97, 301), (260, 258)):
        pc.check_any_image(PIPELINES[pid], images.synthetic_image(mode, w, h, seed=w * h), f"{pid} {mode} {w}x{h}")


@pytest.mark.parametrize("pid", PIPELINES)
def test_one_pixel_image_becomes_a_constant_image(pid):
    pre = PIPELINES[pid]
    out = pc.check_any_image(pre, Image.new("RGB", (1, 1), (200, 100, 50)), f"{pid} 1x1")
    assert np.allclose(out, np.broadcast_to(normalised((200, 100, 50)), out.shape), atol=1e-5)


@pytest.mark.parametrize("pid", PIPELINES)
def test_image_smaller_than_crop_is_scaled_up_not_padded(pid):
    pre = PIPELINES[pid]
    img = Image.new("RGB", (20, 11), (30, 60, 90))
    out = pc.check_any_image(pre, img, f"{pid} 20x11")
    assert np.allclose(out, np.broadcast_to(normalised((30, 60, 90)), out.shape), atol=1e-5)  # no black border


def test_resize_below_crop_pads_black_like_torchvision():
    pre = Preprocess("resize_then_crop", crop=224, resize=200, interpolation="bilinear", mean=MEAN, std=STD)
    out = pc.check_any_image(pre, Image.new("RGB", (300, 200), (255, 255, 255)), "resize 200 < crop 224")
    black, white = normalised((0, 0, 0))[:, 0, 0], normalised((255, 255, 255))[:, 0, 0]
    assert np.allclose(out[:, :12, 100], black[:, None], atol=1e-5)  # (224 - 200) // 2 rows of padding on top
    assert np.allclose(out[:, 12:212, 100], white[:, None], atol=1e-5)
    assert np.allclose(out[:, 212:, 100], black[:, None], atol=1e-5)


def test_tiny_crop_fraction_keeps_at_least_one_pixel():
    cfg = dp.from_dict({"pipeline": "crop_then_resize", "crop_fraction": 0.1, "crop": 8, "interpolation": "bicubic",
                        "color": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1]}, "t")
    out = dp.preprocess(cfg, Image.new("RGB", (2, 2), (9, 9, 9)))
    assert out.shape == (3, 8, 8) and np.all(out == 9)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_discarded_not_composited(mode):
    img = images.synthetic_image(mode, 120, 90, seed=3)
    opaque = img.copy()
    opaque.putalpha(255)
    transparent = img.copy()
    transparent.putalpha(0)  # fully transparent: the hidden colour still counts
    for pre in PIPELINES.values():
        pc.check_same_output(pre, img, opaque, "alpha", mode)
        pc.check_same_output(pre, transparent, opaque, "alpha 0", mode)


def test_palette_transparency_is_ignored():
    img = images.synthetic_image("P", 64, 48, seed=5)
    plain = img.copy()
    plain.info.pop("transparency", None)
    pc.check_same_output(PIPELINES["resnest50"], img, plain, "palette transparency", "P")


@pytest.mark.parametrize("mode", images.IMAGE_MODES)
def test_exif_orientation_is_ignored(mode):
    img = images.synthetic_image(mode, 70, 40, seed=11)
    tagged = images.with_exif_orientation(img, 6)  # "rotate 90 CW to display"
    assert tagged.getexif().get(0x0112) == 6
    for pre in PIPELINES.values():
        pc.check_same_output(pre, tagged, images.with_exif_orientation(img, None), "EXIF orientation 6", mode)


def test_sixteen_bit_grey_is_clipped_at_255_as_pil_converts():
    arr = np.full((40, 50), 1000, np.uint16)
    img = Image.frombytes("I;16", (50, 40), arr.astype("<u2").tobytes())
    out = pc.check_any_image(PIPELINES["hrnet_w18_small_v1"], img, "I;16 1000")
    assert np.allclose(out, np.broadcast_to(normalised((255, 255, 255)), out.shape), atol=1e-5)


# --- planted defects for check_any_image ----------------------------------------------------

def _check_with(run, match):
    img = images.synthetic_image("RGB", 300, 257, seed=1)
    with pytest.raises(CheckFailure, match=match):
        pc.check_any_image(PIPELINES["hrnet_w18_small_v1"], img, "planted 300x257", run=run)


def test_property_check_catches_hwc_layout():
    _check_with(lambda cfg, im: dp.preprocess(cfg, im).transpose(1, 2, 0), r"output shape = \(224, 224, 3\).*CHW")


def test_property_check_catches_float64():
    _check_with(lambda cfg, im: dp.preprocess(cfg, im).astype(np.float64), "output dtype = float64")


def test_property_check_catches_nan():
    def nan(cfg, im):
        x = dp.preprocess(cfg, im)
        x[0, 0, 0] = np.nan
        return x

    _check_with(nan, "non-finite output values = 1")


def test_property_check_catches_nondeterminism():
    rng = np.random.default_rng(0)
    _check_with(lambda cfg, im: dp.preprocess(cfg, im) + rng.normal(0, 1e-3, (3, 224, 224)).astype(np.float32),
                "not deterministic")


def test_property_check_catches_one_pixel_shift():
    shifted = lambda cfg, im: np.roll(dp.preprocess(cfg, im), 1, axis=2)  # noqa: E731
    _check_with(shifted, r"pixels whose grey level differs from the reference = \d+ of 150528.*\[planted 300x257\]")


def test_a_synthetic_case_that_passed_for_one_pipeline_is_not_redone_but_a_failure_always_is(monkeypatch):
    """20 of the 24 cards share one pipeline: the property examples of the second such card in
    a session (the lab's memo) are the first card's verdicts; another pipeline, or a planted pipeline
    function, is another case; a failing case is judged again every time."""
    from _kit import count_calls

    from harness.cache import Memo

    memo = Memo()
    judged = count_calls(monkeypatch, pc, "check_any_image")
    shared = ZOO["hrnet_w18_small_v1"].preprocess
    assert repr(ZOO["repvgg_a0"].preprocess) == repr(shared)
    spec = ("RGB", 301, 97, 12345, 6)
    pc.check_synthetic_image(shared, spec, "hrnet_w18_small_v1", memo)
    pc.check_synthetic_image(ZOO["repvgg_a0"].preprocess, spec, "repvgg_a0", memo)
    assert len(judged) == 1
    pc.check_synthetic_image(PIPELINES["resnest50"], spec, "resnest50", memo)
    assert len(judged) == 2
    pc.check_synthetic_image(shared, spec, "repvgg_a0")  # no memo (a check outside a session): judged
    assert len(judged) == 3

    def bgr_reference(imgs, pre):  # a reference whose channels are reversed: every case fails
        return pc_reference(imgs, pre).flip(1)

    pc_reference = pc.reference_batch
    monkeypatch.setattr(pc, "reference_batch", bgr_reference)
    for _ in range(2):
        with pytest.raises(CheckFailure, match="grey level differs from the reference"):
            pc.check_synthetic_image(shared, spec, "repvgg_a0", memo)
    assert len(judged) == 5
