"""Planted defects for the model-card checks: each fails naming expected, measured and place."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from harness import cardchecks
from harness.compare import CheckFailure
from harness.testing import FakeLab, Recorder
from harness.zoo import load_zoo

ZOO = load_zoo()
LAB = FakeLab()  # one memo for the module: each architecture is counted once


noop = Recorder()  # the record fixture's stand-in


def row(card, source):
    return next(r for r in card.published if source in r.sources)


def test_wrong_width_fails_params_check():
    card = ZOO["hrnet_w18"]
    wrong = dataclasses.replace(card, id="hrnet_w18_as_w30", timm_arch="hrnet_w30")  # built with the wrong width
    with pytest.raises(CheckFailure) as e:
        cardchecks.check_params(wrong, LAB, noop, row(card, "official"))
    msg = str(e.value)
    assert "params of hrnet_w30 = 37.7" in msg and "but should be 21.3M" in msg
    assert "hrnet.toml" in msg and "HRNet_w18" in msg and "+77" in msg


def test_right_width_passes_params_check():
    card = ZOO["hrnet_w18"]
    cardchecks.check_params(card, LAB, noop, row(card, "official"))
    assert noop.figures["params_m_measured"] == pytest.approx(21.299, abs=1e-3)


def test_repvgg_params_are_counted_on_the_deploy_form():
    card = ZOO["repvgg_a0"]
    cardchecks.check_params(card, LAB, noop, card.published[0])
    assert noop.figures["params_form"] == "deploy"
    train = dataclasses.replace(card, id="repvgg_a0_trainform", count_form="train")
    with pytest.raises(CheckFailure, match=r"params of repvgg_a0 = 9.1"):
        cardchecks.check_params(train, LAB, noop, card.published[0])  # train form is ~10% larger


def test_wrong_width_fails_flops_check():
    card = ZOO["hrnet_w18"]
    wrong = dataclasses.replace(card, id="hrnet_w18_as_w32", timm_arch="hrnet_w32")
    with pytest.raises(CheckFailure, match=r"FLOPs \(mmcv\) of hrnet_w32 at 224px = 8.9.*but should be 4.33 G.*cause"):
        cardchecks.check_flops(wrong, LAB, noop, row(card, "mmcls"))


def test_unreproduced_convention_reports_the_ratio():
    card = ZOO["hrnet_w18"]
    with pytest.raises(CheckFailure, match=r"no counter reproduces it.*published / measured conv\+linear GMACs = 2\.25"):
        cardchecks.check_flops(card, LAB, noop, row(card, "timm"))


def test_last_printed_digit_rule():
    from harness.zoo import Printed

    assert cardchecks.within_published(8.3094, Printed("8.30"), 0.001, 1.0)[0]      # truncated in the seed
    assert not cardchecks.within_published(8.33, Printed("8.30"), 0.001, 1.0)[0]
    assert cardchecks.within_published(1.3615, Printed("1.4"), 0.0025, 1.0)[0]      # one decimal printed
    assert not cardchecks.within_published(1.29, Printed("1.4"), 0.0025, 1.0)[0]
    assert load_zoo()["repvgg_a0"].published[0].params_m.text == "8.30"


def test_card_vs_timm_config_reports_both_values():
    card = ZOO["resnest101"]
    with pytest.raises(CheckFailure) as e:
        cardchecks.check_timm_data_config(card, LAB, noop)
    assert "resize_short: card 288 vs timm 292" in str(e.value)


def test_degenerate_model_fails_diversity_check():
    logits = np.zeros((50, 1000), np.float32)
    logits[:, 7] = 1.0
    one_class = FakeLab(reference_logits=logits)  # checkpoint_for: None, the seeded default
    with pytest.raises(CheckFailure, match=r"distinct top-1 classes of repvgg_a0 over 50 eval images = 1, but should be >= 10"):
        cardchecks.check_diverse_predictions(ZOO["repvgg_a0"], one_class, noop)
