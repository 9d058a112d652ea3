"""Export suite: the ONNX file computes what the PyTorch model computes.

Per model and exporter/opset case (legacy 11/13/17, dynamo, legacy 10): the opset written,
``onnx.checker`` with full_check, the declared input/output (names, shapes, dynamic batch),
ORT vs torch numerics against the model's fp64 noise floor, and rows independent of the
batch. With a manifest ``onnx`` entry the user's file is checked instead, against the
reference (manifest checkpoint or seeded default) at the card's input size. A failure
names the first diverging layer.
"""
from __future__ import annotations

import pytest

from harness import onnxfile
from harness.export import checks as exportchecks
from harness.export import fp16
from harness.export.checks import CASES, EXPORT_IMAGES, ExportCase
from harness.plugin import family

pytestmark = pytest.mark.export


def _our_export(lab, card, case: ExportCase):
    if lab.artifacts(card).get("onnx") is not None:
        pytest.skip(f"the manifest names an ONNX file for {card.id}: test_user_onnx_* check it instead")
    return exportchecks.export_case(lab, card, case)


def _runs_files(runtime) -> None:
    """The export numerics judge a file: a runtime that runs the torch module is the reference itself."""
    if runtime.runtime.runs_module:
        pytest.skip(f"not applicable: {runtime.id} runs the torch module, not the file: it is the reference these "
                    "checks compare with (test_runtimes_agree compares it with the other runtimes)")


def _label(card, case: ExportCase) -> str:
    return f"{card.id} ({case.exporter} exporter, opset {case.opset})"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_writes_requested_opset(model_card, case, lab, record):
    res = _our_export(lab, model_card, case)
    exportchecks.check_opset_written(res, record, label=model_card.id, lab=lab)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_passes_onnx_checker(model_card, case, lab, record):
    res = _our_export(lab, model_card, case)
    exportchecks.check_onnx_valid(res.path, record, label=_label(model_card, case), self_contained=True, lab=lab)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_declares_io_with_dynamic_batch(model_card, case, lab, record):
    res = _our_export(lab, model_card, case)
    exportchecks.check_declared_io(res.path, record, input_size=model_card.input_size, label=_label(model_card, case),
                                   lab=lab)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_matches_torch(model_card, case, lab, record, runtime):
    _runs_files(runtime)
    res = _our_export(lab, model_card, case)
    x, _ = lab.inputs(model_card, "eval", limit=EXPORT_IMAGES)
    record(export_seconds=round(res.seconds, 2))
    exportchecks.check_matches_reference(res.path, lab.reference(model_card), x, record,
                                         label=_label(model_card, case), lab=lab, runtime=runtime)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_export_rows_independent_of_batch(model_card, case, lab, record, runtime):
    _runs_files(runtime)
    res = _our_export(lab, model_card, case)
    x, _ = lab.inputs(model_card, "eval", limit=EXPORT_IMAGES)
    exportchecks.check_batch_consistency(res.path, x, record, label=_label(model_card, case), lab=lab,
                                         model=lab.reference(model_card), runtime=runtime)


@family("hrnet")
@pytest.mark.parametrize("opset", [10, 11], ids=lambda o: f"opset{o}")
def test_card_fusion_upsampling_exports_at_opset(model_card, opset, lab, record):
    """The seeds' mmcls note: "opset must be 11; 10 fails". timm's HRNet upsamples with
    nearest; the card's fusion is bilinear, and that is what opset 10 cannot express."""
    variant, mode = exportchecks.card_fusion_model(lab, model_card)
    case = ExportCase("legacy", opset)
    res = exportchecks.export_case(lab, model_card, case, model=variant, tag=f"fusion-{mode}")
    record(fusion_upsample=mode, export_seconds=round(res.seconds, 2), export_warnings=res.log[:600])
    x, _ = lab.inputs(model_card, "eval", limit=EXPORT_IMAGES)
    exportchecks.check_matches_reference(res.path, variant, x, record,
                                         label=f"{model_card.id} with {mode} fusion upsampling (legacy, opset {opset})",
                                         lab=lab)


# --- the user's file (manifest ``onnx``) --------------------------------------------------

def _user_onnx(lab, card):
    path = lab.artifacts(card).get("onnx")
    if path is None:
        pytest.skip(f"no onnx entry for {card.id} in the manifest (--artifacts)")
    onnxfile.load_checked(path)  # InputError naming the file: invalid ONNX, escaping external data
    return path


def _user_onnx_for_inputs(lab, card):
    path = _user_onnx(lab, card)
    exportchecks.require_input_size(path, card, lab)  # InputError: the file is for another input size
    return path


def test_user_onnx_passes_onnx_checker(model_card, lab, record):
    path = _user_onnx(lab, model_card)
    exportchecks.check_onnx_valid(path, record, label=f"{path.name} ({model_card.id})", lab=lab)


def test_user_onnx_declares_io(model_card, lab, record):
    path = _user_onnx(lab, model_card)
    exportchecks.check_declared_io(path, record, input_size=model_card.input_size, names=None,
                                   require_dynamic_batch=False, label=f"{path.name} ({model_card.id})", lab=lab)


def test_user_onnx_matches_reference(model_card, lab, record, runtime):
    _runs_files(runtime)
    path = _user_onnx_for_inputs(lab, model_card)
    x, _ = lab.inputs(model_card, "eval", limit=EXPORT_IMAGES)
    record(weights="checkpoint" if lab.checkpoint_for(model_card) else "recalibrated seeded init")
    exportchecks.check_matches_reference(path, lab.reference(model_card), x, record,
                                         label=f"{path.name} ({model_card.id})", lab=lab, runtime=runtime)


def test_user_onnx_rows_independent_of_batch(model_card, lab, record, runtime):
    _runs_files(runtime)
    path = _user_onnx_for_inputs(lab, model_card)
    x, _ = lab.inputs(model_card, "eval", limit=EXPORT_IMAGES)
    exportchecks.check_batch_consistency(path, x, record, label=f"{path.name} ({model_card.id})", lab=lab,
                                         model=lab.reference(model_card), runtime=runtime)


def test_ort_optimizations_keep_fp32_function(model_card, lab, record):
    """ORT's graph optimizations (ORT_ENABLE_ALL) vs none (ORT_DISABLE_ALL) on the fp32 file
    under test (the manifest's ``onnx`` or our default export): within the export tolerance;
    on failure the responsible ORT graph transformer is named by bisecting
    ``disabled_optimizers``."""
    path, label = exportchecks.fp32_file_under_test(lab, model_card)
    exportchecks.check_ort_optimizations(model_card, lab, record, path=path, model=lab.reference(model_card), label=label)


def test_fp16_onnx_within_tolerance(model_card, lab, record, runtime):
    """The fp32 file under test, converted to fp16 by ONNX Runtime's float16 converter (fp32 input
    and output), computes on the runtime what the fp32 file computes there, within a multiple of
    the fp16 rounding floor (the fp32 file with weights and input rounded to fp16)."""
    _runs_files(runtime)
    path, label = exportchecks.fp32_file_under_test(lab, model_card)
    x, _ = lab.inputs(model_card, "eval", limit=EXPORT_IMAGES)
    fp16.check_fp16_onnx_within_tolerance(path, fp16.fp16_file(lab, path), x.numpy(), record, label=label,
                                          threads=lab.settings.threads, runtime=runtime, lab=lab)
