"""Planted defects for the preprocessing parity checks: each fails naming the key at fault,
the measured difference and its effect on predictions."""
from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn as nn

from harness.compare import CheckFailure, Inconclusive
from harness.preprocess import checks as pc
from harness.preprocess import deploy as dp
from harness.transforms import ECenterCrop, reference_transform
from harness.zoo import load_zoo

ZOO = load_zoo()
HRNET, R50, R101 = ZOO["hrnet_w18_small_v1"], ZOO["resnest50"], ZOO["resnest101"]


class Figures(dict):
    def __call__(self, **figures):
        self.update(figures)


@cache
def natural():
    return pc.natural_images(None, 6)


def parity(card):
    imgs, names = natural()
    return pc.parity_set(imgs, card.preprocess, names)


def tiny_model() -> nn.Module:
    """A cheap classifier that still tells images apart (stands in for lab.reference)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 50)).eval()


def planted(card, **changes) -> dp.DeployConfig:
    d = {**dp.config_from_card(card).to_dict(), **changes}
    return dp.from_dict(d, "deploy/planted.json")


def fail_message(card, cfg, model=None) -> tuple[str, Figures]:
    rec = Figures()
    with pytest.raises(CheckFailure) as e:
        pc.check_deploy_config(card, cfg, parity(card), rec, model=model)
    return str(e.value), rec


@pytest.mark.parametrize("card", [HRNET, R50, R101], ids=lambda c: c.id)
def test_config_derived_from_card_passes(card):
    rec = Figures()
    pc.check_deploy_config(card, dp.config_from_card(card), parity(card), rec)
    assert rec["max_grey_levels"] == 0.0 and rec["parity_images"] > 20  # the geometry is bit-exact


def test_bgr_names_color_and_reports_effect():
    msg, rec = fail_message(HRNET, planted(HRNET, color="BGR"), model=tiny_model)
    assert "deploy/planted.json key 'color'" in msg and "'color' = 'BGR' (card: 'RGB')" in msg
    assert "substituting the card's color restores the match" in msg
    assert "but should be <= 1 grey level" in msg and "top-1 agreement" in msg and "noise floor" in msg
    assert rec["restoring_keys"] == ["color"] and 0 <= rec["top1_agreement"] <= 1


def test_bgr_with_reordered_mean_std_names_all_three_keys():
    good = dp.config_from_card(HRNET)
    msg, rec = fail_message(HRNET, planted(HRNET, color="BGR", mean=list(good.mean)[::-1], std=list(good.std)[::-1]))
    assert "keys 'color', 'mean', 'std'" in msg and "channels in reverse order" in msg
    assert rec["restoring_keys"] == ["color+mean+std"]


def test_mean_std_in_unit_range_names_mean_and_std():
    msg, rec = fail_message(HRNET, planted(HRNET, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    assert "keys 'mean', 'std'" in msg and "0-1 units in a 0-255 config: multiply by 255" in msg
    assert rec["restoring_keys"] == ["mean+std"]


def test_bicubic_for_bilinear_names_interpolation():
    msg, rec = fail_message(HRNET, planted(HRNET, interpolation="bicubic"))
    assert "key 'interpolation'" in msg and "'interpolation' = 'bicubic' (card: 'bilinear')" in msg
    assert rec["max_grey_levels"] > 1


def test_resize_to_crop_size_names_resize():
    msg, _ = fail_message(HRNET, planted(HRNET, resize=224))
    assert "key 'resize'" in msg and "'resize' = 224 (card: 256)" in msg and "keeps more of the image" in msg


@pytest.mark.parametrize("card", [HRNET, R50], ids=lambda c: c.id)
def test_round_half_up_offset_names_crop_offset_rounding(card):
    msg, rec = fail_message(card, planted(card, crop_offset_rounding="half_up"))
    assert "key 'crop_offset_rounding'" in msg and "shifts 1 px where the margin is odd" in msg
    assert rec["worst_image"].startswith("probe") or rec["max_grey_levels"] > 1


def test_wrong_crop_fraction_names_crop_fraction():
    # resnest101's config with resnest50's fraction 224/256 instead of 256/288
    msg, _ = fail_message(R101, planted(R101, crop_fraction=0.875))
    assert "key 'crop_fraction'" in msg and "keeps 0.875 of the short side instead of 0.8889" in msg


def test_wrong_crop_size_reports_shape():
    msg, rec = fail_message(HRNET, planted(HRNET, crop=256))
    assert "output shape (3, 256, 256)" in msg and "key 'crop'" in msg


def test_resize_then_crop_for_ecenter_names_pipeline():
    r50 = dp.config_from_card(R50)
    cfg = dp.from_dict({**{k: v for k, v in r50.to_dict().items() if k != "crop_fraction"},
                        "pipeline": "resize_then_crop", "resize": 256}, "deploy/r50.json")
    msg, rec = fail_message(R50, cfg)
    assert "'pipeline' = 'resize_then_crop' (card: 'crop_then_resize')" in msg
    assert rec["restoring_keys"] == ["pipeline+resize+crop_fraction"]


def test_implementation_defect_without_differing_key_blames_the_implementation(monkeypatch):
    # half-up offsets planted in the implementation itself, the config untouched
    monkeypatch.setattr(dp, "round_offset", lambda x, rounding: int(np.floor(x + 0.5)))
    msg, rec = fail_message(HRNET, dp.config_from_card(HRNET))
    assert "harness/preprocess/deploy.py" in msg and "equals the card-derived config" in msg
    assert rec["differing_keys"] == []


def test_effect_error_does_not_hide_the_pixel_verdict():
    def broken():
        raise RuntimeError("no weights")

    msg, rec = fail_message(HRNET, planted(HRNET, color="BGR"), model=broken)
    assert "key 'color'" in msg and "effect on predictions not measured (RuntimeError: no weights)" in msg


# --- timm view ---------------------------------------------------------------------------

def test_timm_transform_equal_to_card_passes():
    rec = Figures()
    pc.check_timm_transform(ZOO["repvgg_a0"], parity(ZOO["repvgg_a0"]), rec)
    assert rec["max_grey_levels"] == 0.0 and rec["timm_as_config_max_grey_levels"] == 0.0


def test_timm_transform_differing_from_card_names_key_and_reports_both():
    # a card planted with bicubic where timm's repvgg config (like the seed) says bilinear
    card = dataclasses.replace(ZOO["repvgg_a0"], preprocess=dataclasses.replace(ZOO["repvgg_a0"].preprocess,
                                                                                  interpolation="bicubic"))
    rec = Figures()
    with pytest.raises(CheckFailure) as e:
        pc.check_timm_transform(card, parity(card), rec, model=tiny_model)
    msg = str(e.value)
    assert "timm eval transform - card reference" in msg and "key 'interpolation'" in msg
    assert "'interpolation' = 'bilinear' (card: 'bicubic')" in msg and "top-1 agreement" in msg
    assert "bilinear" in rec["timm_pipeline"] and "bicubic" in rec["card_pipeline"]


def test_misread_timm_config_is_blamed_on_the_harness(monkeypatch):
    real = dp.config_from_timm
    monkeypatch.setattr(dp, "config_from_timm", lambda dc, src: dataclasses.replace(real(dc, src), resize=257))
    with pytest.raises(CheckFailure, match=r"harness config - timm transform.*config_from_timm.*misreads"):
        pc.check_timm_transform(ZOO["repvgg_a0"], parity(ZOO["repvgg_a0"]), Figures())


# --- ECenterCrop vs Resize+CenterCrop -----------------------------------------------------

def test_ecenter_square_identity_holds():
    rec = Figures()
    pc.check_ecenter_square_identity(R50, natural()[0][:2], rec)
    assert rec["square_identical"] is True and rec["square_side"] == 256


class ECenterCropWrongMargin(ECenterCrop):
    """A port that hard-codes the margin as 30 px instead of 32."""

    def __call__(self, img):
        w, h = img.size
        side = float(self.imgsize) / (self.imgsize + 30) * min(w, h)
        top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
        return self.resize_method(img.crop((left, top, left + side, top + side)))


def test_ecenter_square_identity_catches_a_wrong_margin():
    from torchvision import transforms

    wrong = transforms.Compose([ECenterCropWrongMargin(224), *reference_transform(R50.preprocess).transforms[1:]])
    with pytest.raises(CheckFailure) as e:
        pc.check_ecenter_square_identity(R50, natural()[0][:2], Figures(), ecenter=wrong)
    msg = str(e.value)
    assert "ECenterCrop(224) vs Resize(256)+CenterCrop(224) on 256x256 images = 2/2 differ" in msg
    assert "bit-identical" in msg and "crop fraction" in msg


def test_ecenter_check_refuses_a_resize_then_crop_card():
    with pytest.raises(CheckFailure, match="pipeline of hrnet_w18_small_v1 = resize_then_crop"):
        pc.check_ecenter_square_identity(HRNET, natural()[0][:1], Figures())


def test_ecenter_figures_are_recorded():
    rec = Figures()
    pc.check_ecenter_vs_resize_crop(R50, parity(R50)[:10], rec, model=tiny_model(), effect_images=6)
    assert rec["size"] == 224 and rec["resize_crop_bilinear_max_normalised"] > 0.1
    assert 0 < rec["resize_crop_bilinear_mean_normalised"] < rec["resize_crop_bilinear_max_normalised"]
    assert rec["effect_images"] == 6 and rec["effect_vs_noise_floor"] in ("within", "beyond")


def test_ecenter_figures_inconclusive_on_a_constant_model():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 10) + torch.arange(10.0)

    with pytest.raises(Inconclusive, match="one class"):
        pc.check_ecenter_vs_resize_crop(R50, parity(R50)[:4], Figures(), model=Constant(), effect_images=4)


# --- measuring helpers --------------------------------------------------------------------

def test_prediction_effect_identical_inputs_agree_fully():
    x = np.stack(pc.reference_outputs(natural()[0][:4], HRNET.preprocess))
    e = pc.prediction_effect(tiny_model(), x, x.copy(), HRNET.preprocess.std)
    assert e["top1_agreement"] == 1.0 and e["logit_change_median"] == 0.0
    assert e["noise_floor_logit_change_median"] > 0  # the noise does reach the model


def test_pixel_stats_in_grey_levels():
    std = (0.25, 0.5, 1.0)
    ref = np.zeros((3, 2, 2), np.float32)
    out = ref.copy()
    out[1, 0, 0] = 2 / 255 / 0.5  # two grey levels in the green channel
    s = pc.pixel_stats([out], [ref], std)
    assert s["max_grey"] == pytest.approx(2.0) and s["max_norm"] == pytest.approx(2 / 255 / 0.5)
