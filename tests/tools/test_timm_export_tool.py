"""timm's ``timm.utils.onnx.onnx_export`` (what ``timm/onnx_export.py`` runs): its files name the
input ``input0`` and pass; ``--reparam`` (timm.utils.reparameterize_model first) passes;
``training=True`` writes BatchNormalization nodes in training mode, and the numerics check must
name them, not blame a Conv "with BatchNorm folded in" (issue 18 item 3)."""
from __future__ import annotations

import copy

import onnx
import pytest

from harness.compare import CheckFailure
from harness.export import checks as exportchecks
from harness.testing import Recorder

timm_onnx = pytest.importorskip("timm.utils.onnx", reason="timm's onnx_export (timm >= 0.9)")

IMAGES = 4


def fresh(model):
    """A copy for the tool, which changes its model (.train()/.eval(); in training mode a forward
    updates the BN running statistics)."""
    return copy.deepcopy(model)


def timm_export(model, path, *, training=False, reparam=False):
    m = fresh(model)
    if reparam:
        from timm.utils import reparameterize_model

        m = reparameterize_model(m.eval())
    timm_onnx.onnx_export(m, str(path), training=training, batch_size=2, input_size=(3, 224, 224), opset=17,
                          check=True)
    return path


@pytest.fixture(scope="module")
def plain(repvgg, tmp_path_factory):
    return timm_export(repvgg.model, tmp_path_factory.mktemp("timm") / "repvgg_a0.onnx")


@pytest.fixture(scope="module")
def training(repvgg, tmp_path_factory):
    return timm_export(repvgg.model, tmp_path_factory.mktemp("timm") / "repvgg_a0.train.onnx", training=True)


def test_onnx_export_passes_under_its_own_input_name(repvgg, plain):
    proto = onnx.load(str(plain), load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["input0"]  # timm's name, read from the file
    rec = Recorder()
    exportchecks.check_matches_reference(plain, repvgg.model, repvgg.x, rec, label="timm onnx_export")
    assert rec.figures["rel_max_error"] <= rec.figures["tolerance"]
    exportchecks.check_batch_consistency(plain, repvgg.x, Recorder(), label="timm onnx_export", model=repvgg.model)


def test_onnx_export_of_the_reparameterized_model_passes(repvgg, tmp_path):
    path = timm_export(repvgg.model, tmp_path / "repvgg_a0.reparam.onnx", reparam=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Add" not in ops  # one 3x3 conv per block: the branches are fused
    rec = Recorder()
    exportchecks.check_matches_reference(path, repvgg.model, repvgg.x, rec, label="timm onnx_export --reparam")
    assert rec.figures["rel_max_error"] <= rec.figures["tolerance"]


def test_training_mode_export_fails_naming_the_training_mode_batchnorm(repvgg, training):
    bns = [n for n in onnx.load(str(training)).graph.node if n.op_type == "BatchNormalization"]
    assert bns and all(a.i == 1 for n in bns for a in n.attribute if a.name == "training_mode")
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_matches_reference(training, repvgg.model, repvgg.x[:IMAGES], Recorder(),
                                             label="timm onnx_export(training=True)")
    msg = str(ei.value)
    # the first diverging layer is the BN itself (its Conv matches once the BN is known unfolded)
    assert "first diverging layer: module 'stem.conv_1x1.bn'" in msg and "(BatchNormalization)" in msg, msg
    assert "layers up to 'stem.conv_1x1.conv' match" in msg, msg
    assert "runs in training mode (training_mode=1)" in msg and "onnx_export(training=True)" in msg, msg
    assert "re-export after model.eval()" in msg, msg
    assert "folded in" not in msg, msg  # the old, wrong blame: a Conv weight "with BatchNorm folded in"


def test_training_mode_export_fails_batch_consistency_naming_the_node(repvgg, training):
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_batch_consistency(training, repvgg.x, Recorder(), label="train", model=repvgg.model)
    msg = str(ei.value)
    assert "BatchNormalization" in msg and "mixes images across the batch" in msg, msg


@pytest.mark.slow
def test_training_mode_export_of_hrnet_names_bn1_not_conv1(hrnet, tmp_path):
    """The issue's own case: hrnet_w18_small_v1, whose message blamed '/conv1/Conv' with 'bn1' folded in."""
    path = timm_export(hrnet.model, tmp_path / "hrnet.train.onnx", training=True)
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_matches_reference(path, hrnet.model, hrnet.x, Recorder(), label="hrnet train export")
    msg = str(ei.value)
    assert "module 'bn1' (BatchNorm2d) = ONNX node '/bn1/BatchNormalization'" in msg, msg
    assert "layers up to 'conv1' match" in msg and "runs in training mode" in msg, msg
    assert "folded in" not in msg, msg
