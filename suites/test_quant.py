"""int8 quantization suite: the quantized model is still the fp32 model, within a tolerance
that means something, and when it is not, the failing layers are named.

Each calibration method (MinMax, Percentile 99.999, Entropy) is quantized with ONNX
Runtime (QDQ, per-channel int8 weights, uint8 activations) on the calibration split and
judged on the evaluation split, in two verdicts: (a) the int8 *model*, run as a QDQ float
simulation, the same on every host; (b) this host's integer *kernels* against that
simulation. (a) is judged by labelled accuracy with real ImageNet and real weights,
else agreement and centred-logit cosine against a +-2-grey-level noise floor. A manifest
``int8_onnx`` is checked instead of our own model: QDQ or QOperator, judged on the
embedded photographs (its deployment domain; the other kinds are figures), or on every
image with --imagenet. RepVGG's known PTQ collapse is declared
in fixtures/expectations.toml (strict), never absorbed into the tolerance.
"""
from __future__ import annotations

import pytest

from harness.quant import checks as quantchecks
from harness.quant.quantize import DEFAULT_METHOD, METHODS

pytestmark = pytest.mark.quant


def _skip_other_methods_for_user_file(lab, card, method):
    if method != DEFAULT_METHOD and lab.artifacts(card).get("int8_onnx") is not None:
        pytest.skip(f"manifest int8_onnx given for {card.id}: it is checked once (under {DEFAULT_METHOD})")


def test_calibration_set_is_not_the_eval_set(model_card, lab, record):
    quantchecks.check_calibration_split(model_card, lab, record)


# The default method (Percentile, the seeds' "int8-percentile") runs in every tier; MinMax
# and Entropy each add a calibration per model (resnest50: 36 s / 69 s of CPU for 100
# images, cold), so they are `slow`: run by `-m quant` and nightly, not by CI's "not slow".
METHOD_CASES = [pytest.param(m, marks=() if m == DEFAULT_METHOD else pytest.mark.slow) for m in METHODS]


def _runs_int8(runtime) -> None:
    ok, why = runtime.supports("int8")
    if not ok:
        pytest.skip(f"not applicable: {why}")


@pytest.mark.parametrize("method", METHOD_CASES)
def test_int8_matches_fp32(model_card, method, lab, record, runtime):
    _skip_other_methods_for_user_file(lab, model_card, method)
    _runs_int8(runtime)
    not_applicable = quantchecks.check_int8_matches_fp32(model_card, lab, record, method, runtime=runtime)
    if not_applicable:
        pytest.skip(f"not applicable: {not_applicable}")


def test_int8_layers_keep_sqnr(model_card, lab, record):
    not_applicable = quantchecks.check_layer_sqnr(model_card, lab, record, DEFAULT_METHOD)
    if not_applicable:
        pytest.skip(f"not applicable: {not_applicable}")


def test_int8_kernels_match_simulation(model_card, lab, record, runtime):
    """Verdict (b), about this host and runtime: the runtime's integer kernels compute the QDQ
    graph (ORT's float simulation of it). Without VNNI, U8S8 files quantized without
    reduce_range fail here on ORT, and the message gives the same file's figures with 7-bit weights."""
    _runs_int8(runtime)
    not_applicable = quantchecks.check_int8_kernels_match_simulation(model_card, lab, record, DEFAULT_METHOD,
                                                                    runtime=runtime)
    if not_applicable:
        pytest.skip(f"not applicable: {not_applicable}")
