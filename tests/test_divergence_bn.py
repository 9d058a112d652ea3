"""The layer search against BatchNormalization nodes the exporter did not fold (issue 18 item 3).

An eval-mode export folds every BN into its Conv; a training-mode export (``torch.onnx.export(
training=TrainingMode.TRAINING)``, timm's ``onnx_export(training=True)``) keeps each BN as a
node that normalises with the batch's statistics. The search must compare the Conv with the
bare convolution there (not with the BN's output, as for a folded pair) and name the BN node,
its training mode, or the parameter that differs. The real tool's file is tested in
tests/tools/test_timm_export_tool.py; here a small module keeps each case to a second.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from harness import divergence


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def model():
    m = _ConvBN()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):  # statistics far from a single image's: training mode shows
            bn.running_mean.copy_(0.3 * torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.weight.copy_(1 + 0.2 * torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
    return m.eval()


X = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))


def _export(model, path, opset, training):
    m = copy.deepcopy(model)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    m.train(training)
    torch.onnx.export(m, X[:1], str(path), training=mode, opset_version=opset, dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "b"}})
    return onnx.load(str(path))


def _search(model, proto, tmp_path):
    path = tmp_path / "probe.onnx"
    onnx.save(proto, str(path))
    return divergence.first_divergence(model, path, X[:1], k=10.0, minimum=1e-6)


def _as_inference(model, proto):
    """The training export made an inference one without folding: training_mode=0, one output,
    the module's running statistics (the export's forward updated the copy's)."""
    inits = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type != "BatchNormalization":
            continue
        for a in n.attribute:
            if a.name == "training_mode":
                a.i = 0
        del n.output[1:]
        bn = model.get_submodule(n.name.split("/")[1])
        for inp, ref in zip(n.input[3:5], (bn.running_mean, bn.running_var)):
            inits[inp].CopyFrom(numpy_helper.from_array(ref.detach().numpy().astype(np.float32), inp))
    return proto


@pytest.mark.parametrize("opset", [13, 17])  # 13: no training_mode attribute, the extra outputs say it
def test_training_mode_batchnorm_is_named_not_the_conv_before_it(model, tmp_path, opset):
    proto = _export(model, tmp_path / "train.onnx", opset, training=True)
    div = _search(model, proto, tmp_path)
    assert div.module == "bn1" and div.op_type == "BatchNormalization", div.where()
    assert div.last_match == "conv1"  # the bare convolution matches: it is not compared as if folded
    assert "'/bn1/BatchNormalization' (module 'bn1') runs in training mode" in div.hint, div.hint
    assert "folded in" not in div.hint


def test_inference_mode_unfolded_batchnorm_matches(model, tmp_path):
    """The control: an unfolded BN node in inference mode with the module's parameters computes the model."""
    proto = _as_inference(model, _export(model, tmp_path / "train.onnx", 17, training=True))
    div = _search(model, proto, tmp_path)
    assert div.module is None, div.where()
    assert div.compared >= 4  # conv1, bn1, conv2, bn2 each compared on its own


def test_unfolded_batchnorm_with_stale_variance_is_named(model, tmp_path):
    proto = _as_inference(model, _export(model, tmp_path / "train.onnx", 17, training=True))
    bn2 = next(n for n in proto.graph.node if n.name == "/bn2/BatchNormalization")
    init = next(i for i in proto.graph.initializer if i.name == bn2.input[4])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))  # stale statistics
    div = _search(model, proto, tmp_path)
    assert div.module == "bn2" and div.last_match == "conv2", div.where()
    assert "BatchNormalization node '/bn2/BatchNormalization' differs from module 'bn2': var" in div.hint, div.hint
    assert "training mode" not in div.hint


def test_folded_export_still_compares_the_conv_with_its_batchnorm(model, tmp_path):
    """An eval export folds the BN: the Conv node stands for conv+bn, and a weight edit there is
    named as before, "with BatchNorm folded in"."""
    proto = _export(model, tmp_path / "eval.onnx", 17, training=False)
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    init = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    w = numpy_helper.to_array(init).copy()
    w[3] *= 1.05
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    div = _search(model, proto, tmp_path)
    assert div.module == "conv1", div.where()
    assert "with BatchNorm 'bn1' folded in in 1 of 8 output channel(s) [3]" in div.hint, div.hint
