"""Issue 20, item 6: the int8 agreement check (verdict (a)) names the images int8 flips and
fp32 under input noise does not, with their fp32 top-2 margins: at most 5 in the message, all
of them as the figure ``int8_only_flip_list``, and as arrays for the repro bundle. On the real
planted defect of tests/test_quant_defects.py (flat-grey calibration; artifacts from the lab's
cache, shared with that test)."""
from __future__ import annotations

import re

import pytest
from _kit import recorder
from test_quant_defects import MODEL, flat_grey_images

from harness.compare import CheckFailure
from harness.lab import Lab, Settings
from harness.quant import checks as qc
from harness.quant import quantize as qz


def test_a_failing_int8_agreement_lists_the_images_only_int8_flips(lab):
    qlab = Lab(Settings(cache_dir=lab.settings.cache_dir)) if (lab.uses_real_data or lab.settings.artifacts) else lab
    card = qlab.zoo[MODEL]
    flat = qz.quantized_result(qlab, card, "minmax", calib=flat_grey_images(card), calib_source="flat grey images")
    subject = qc.Subject(flat.path, qz.fp32_source(qlab, card), f"int8 (minmax, flat-grey calibration) {card.id}",
                         quant=flat, float_for_report=qz.preprocessed(qlab, qz.fp32_source(qlab, card)))
    rec = recorder()
    with pytest.raises(CheckFailure) as e:
        qc.check_int8_matches_fp32(card, qlab, rec, "minmax", subject=subject)
    figs = {**rec.figures, **e.value.figures}
    flips = figs["int8_only_flip_list"]
    assert figs["int8_flips"] == figs["int8_only_flips"] + figs["int8_flips_also_under_noise"] > 0
    assert len(flips) == figs["int8_only_flips"] and flips == sorted(flips, key=lambda r: -r["fp32_top2_margin"])
    names = {s.name for s in qlab.images("eval").samples}
    assert all(r["image"] in names for r in flips)
    msg = str(e.value)
    assert "that fp32 under input noise keeps; largest fp32 top-2 logit margins: " in msg
    listed = re.findall(r"(\S+) \(margin ", msg.split("largest fp32 top-2 logit margins: ")[1].split("(full list")[0])
    assert listed == [r["image"] for r in flips[:5]]
    assert list(e.value.inputs["int8_only_flip_index"]) == [r["index"] for r in flips]
