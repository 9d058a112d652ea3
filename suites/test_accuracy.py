"""Accuracy suite: on real ImageNet, the model reaches the accuracy its card publishes.

fp32 top-1/top-5 of the torch reference (real weights) and of the ONNX under test, with the
card's preprocessing, against the card's claimed row (harness/accuracy.py says which row
and how the tolerance widens on a subset); and the ONNX predicts what the reference
predicts. Without ``--imagenet DIR`` and real weights these checks skip, saying what to give.
"""
from __future__ import annotations

import pytest

from harness import accuracy

pytestmark = pytest.mark.accuracy


def _require(lab, card, runner):
    reason = accuracy.requirements(lab, card, runner)
    if reason:
        pytest.skip(reason)


def _source(lab):
    return lab.settings.extra.get("weights_source")


def test_reference_accuracy_matches_card(model_card, lab, record):
    _require(lab, model_card, "torch")
    ev = accuracy.evaluation(lab, model_card)
    accuracy.check_against_card(model_card, ev, "torch", record, source=_source(lab))


def test_onnx_accuracy_matches_card(model_card, lab, record, runtime):
    _require(lab, model_card, "onnx")
    record(runtime=runtime.id)
    ev = accuracy.evaluation(lab, model_card, runtime)
    row = how = None
    if "torch" in ev.runners and "torch" not in ev.errors:
        # held to the row the reference claims, not to whichever row is closest to the ONNX
        row, how = accuracy.claimed_row(model_card, 100 * ev.accuracy("torch", 1), _source(lab))
        how = f"the torch reference's row ({how})"
    accuracy.check_against_card(model_card, ev, "onnx", record, source=_source(lab), row=row, how=how)


def test_onnx_predicts_like_reference(model_card, lab, record, runtime):
    _require(lab, model_card, "torch")
    _require(lab, model_card, "onnx")
    record(runtime=runtime.id)
    ev = accuracy.evaluation(lab, model_card, runtime)
    accuracy.check_runtime_matches_reference(model_card, ev, "onnx", "torch", record)
