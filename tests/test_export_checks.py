"""Planted export defects: each check of suites/test_export.py must fail, naming cause and place.

Every defect is planted in a real export of a smoke model (repvgg_a0, hrnet_w18_small_v1)
the way it happens in practice: a weight edited in the file, a Resize mode changed, a
channel swap or batch statistics baked into the graph, an export without dynamic axes,
a file at the wrong opset, a hand-edited graph, a truncated cache entry, a broken user file.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from harness.cache import ArtifactCache
from harness.compare import CheckFailure, Inconclusive
from harness.errors import InputError
from harness.export import checks as exportchecks
from harness.export.checks import ExportCase
from harness.export.exporter import ExportResult, export_onnx, exported
from harness.lab import Lab, Settings
from harness.testing import Recorder

IMAGES = 4  # numerics self-tests: a few images keep each test to seconds


Rec = Recorder  # the record fixture's stand-in (harness/testing.py)


@pytest.fixture(scope="module")
def lab():
    return Lab(Settings(models=["repvgg_a0", "hrnet_w18_small_v1"]))


@pytest.fixture(scope="module")
def repvgg(lab):
    card = next(c for c in lab.cards if c.id == "repvgg_a0")
    x, _ = lab.inputs(card, "eval", limit=8)
    return SimpleNamespace(card=card, model=lab.reference(card), x=x, res=exported(lab, card, opset=17))


@pytest.fixture(scope="module")
def hrnet(lab):
    card = next(c for c in lab.cards if c.id == "hrnet_w18_small_v1")
    x, _ = lab.inputs(card, "eval", limit=IMAGES)
    return SimpleNamespace(card=card, model=lab.reference(card), x=x, res=exported(lab, card, opset=17))


def _save(proto, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


def _numerics(path, m, x=None):
    exportchecks.check_matches_reference(path, m.model, (x if x is not None else m.x)[:IMAGES], Rec(), label=path.name)


# --- the control: the clean file passes everything -----------------------------------------

def test_clean_export_passes_every_check(repvgg):
    rec = Rec()
    exportchecks.check_opset_written(repvgg.res, rec, label="repvgg_a0")
    exportchecks.check_onnx_valid(repvgg.res.path, rec, label="clean")
    exportchecks.check_declared_io(repvgg.res.path, rec, input_size=224, label="clean")
    exportchecks.check_matches_reference(repvgg.res.path, repvgg.model, repvgg.x[:IMAGES], rec, label="clean")
    exportchecks.check_batch_consistency(repvgg.res.path, repvgg.x, rec, label="clean")
    assert rec.figures["rel_max_error"] <= rec.figures["tolerance"]
    assert rec.figures["batch_dynamic"] is True


# --- numerics: perturbed weight, Resize mode, swapped channels -----------------------------

def test_perturbed_conv_channel_fails_naming_layer_and_weight(repvgg, tmp_path):
    proto = onnx.load(str(repvgg.res.path))
    node = next(n for n in proto.graph.node if n.name == "/stages/stages.2/stages.2.4/conv_kxk/conv/Conv")
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w[5] *= 1.01  # 1% of one output channel
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = _save(proto, tmp_path, "perturbed.onnx")
    with pytest.raises(CheckFailure) as ei:
        _numerics(path, repvgg)
    msg = str(ei.value)
    assert "first diverging layer: module 'stages.2.4.conv_kxk" in msg, msg
    assert node.name in msg and "weight differs" in msg and "[5]" in msg, msg
    # top-1 alone would have passed this file: recorded, but not what failed it
    assert ei.value.figures["top1_agreement"] >= 0.75


def test_changed_resize_mode_in_hrnet_fusion_fails_naming_upsample(hrnet, tmp_path):
    proto = onnx.load(str(hrnet.res.path))
    resize = next(n for n in proto.graph.node if n.op_type == "Resize")
    for a in resize.attribute:
        if a.name == "mode":
            a.s = b"linear"  # nearest -> bilinear in the file, the torch model still nearest
        if a.name == "coordinate_transformation_mode":
            a.s = b"half_pixel"
    path = _save(proto, tmp_path, "resize_linear.onnx")
    with pytest.raises(CheckFailure) as ei:
        _numerics(path, hrnet)
    msg = str(ei.value)
    assert "module 'stage2.0.fuse_layers.0.1.2' (Upsample)" in msg, msg
    assert resize.name in msg and "mode='linear'" in msg and "mode='nearest'" in msg, msg


def test_card_fusion_variant_against_nearest_file_names_upsample(lab, hrnet):
    """The other direction: the torch side upsamples bilinear (the card), the file nearest."""
    variant, mode = exportchecks.card_fusion_model(lab, hrnet.card)
    assert mode == "bilinear"
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_matches_reference(hrnet.res.path, variant, hrnet.x, Rec(), label="nearest file")
    msg = str(ei.value)
    assert "(Upsample)" in msg and "mode='nearest'" in msg and "mode='bilinear'" in msg, msg


def test_swapped_input_channels_fail_naming_cause_and_first_layer(repvgg, tmp_path):
    proto = onnx.load(str(repvgg.res.path))
    proto.graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "bgr_order"))
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            if name == "input":
                n.input[i] = "input_bgr"
    proto.graph.node.insert(0, helper.make_node("Gather", ["input", "bgr_order"], ["input_bgr"], axis=1,
                                                name="rgb_to_bgr"))
    path = _save(proto, tmp_path, "bgr.onnx")
    with pytest.raises(CheckFailure) as ei:
        _numerics(path, repvgg)
    msg = str(ei.value)
    assert "reverses the input channels" in msg, msg
    assert "module 'stem" in msg and "rgb_to_bgr" in msg, msg


# --- structure: dynamic batch, opset, checker ----------------------------------------------

def test_lost_dynamic_batch_axis_fails_naming_the_input(lab, repvgg):
    res = exported(lab, repvgg.card, opset=17, dynamic_batch=False)
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_declared_io(res.path, Rec(), input_size=224, label="static")
    msg = str(ei.value)
    assert "dim 0 of 'input'" in msg and "dynamic batch axis" in msg and str(res.path) in msg, msg
    with pytest.raises(Inconclusive) as inc:  # rows cannot be compared across batch sizes
        exportchecks.check_batch_consistency(res.path, repvgg.x, Rec(), label="static")
    assert not inc.value.failing


def test_wrong_opset_fails_naming_file_and_exporter(lab, repvgg):
    # a file at opset 13 handed over as the opset-17 export
    at13 = exported(lab, repvgg.card, opset=13)
    res = ExportResult(at13.path, "legacy", 17, 17, at13.seconds)  # its log claims 17: the file is read
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_opset_written(res, Rec(), label="repvgg_a0")
    msg = str(ei.value)
    assert "= 13, but should be 17" in msg and "opset_import" in msg and str(at13.path) in msg, msg


def test_dynamo_opset_is_reported_as_exporter_cause(repvgg):
    res = ExportResult(repvgg.res.path, "dynamo", 11, None, 0.0)  # a file declaring 17 asked at 11
    with pytest.raises(CheckFailure, match="dynamo exporter .* ignores opset_version"):
        exportchecks.check_opset_written(res, Rec(), label="repvgg_a0")


def test_unsorted_graph_fails_onnx_checker(repvgg, tmp_path):
    proto = onnx.load(str(repvgg.res.path))
    last = copy.deepcopy(proto.graph.node[-1])
    del proto.graph.node[-1]
    proto.graph.node.insert(0, last)  # a hand edit that breaks topological order
    path = _save(proto, tmp_path, "unsorted.onnx")
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_onnx_valid(path, Rec(), label="unsorted")
    assert "check_model(full_check=True)" in str(ei.value) and str(path) in str(ei.value)


# --- batch consistency ---------------------------------------------------------------------

def test_batch_statistics_fail_batch_consistency_naming_node(repvgg, tmp_path):
    proto = onnx.load(str(repvgg.res.path))
    for n in proto.graph.node:
        for i, name in enumerate(n.input):
            if name == "input":
                n.input[i] = "input_centred"
    proto.graph.node.insert(0, helper.make_node("ReduceMean", ["input"], ["batch_mean"], axes=[0], keepdims=1,
                                                name="batch_mean"))
    proto.graph.node.insert(1, helper.make_node("Sub", ["input", "batch_mean"], ["input_centred"],
                                                name="subtract_batch_mean"))
    path = _save(proto, tmp_path, "batchstats.onnx")
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_batch_consistency(path, repvgg.x, Rec(), label="batchstats", model=repvgg.model)
    msg = str(ei.value)
    # the Sub is the first node whose per-image rows change; it names the batch mean it uses
    assert "first batch-dependent node: 'subtract_batch_mean' (Sub <- input, batch_mean)" in msg, msg
    assert "mixes images across the batch" in msg, msg


# --- the user's file -----------------------------------------------------------------------

def test_invalid_user_onnx_is_an_input_error_naming_the_file(repvgg, tmp_path):
    bad = tmp_path / "truncated.onnx"
    data = repvgg.res.path.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # an interrupted copy
    with pytest.raises(InputError) as ei:
        exportchecks.check_onnx_valid(bad, Rec(), label="user")
    assert str(bad) in str(ei.value)


def test_user_onnx_with_escaping_external_data_is_refused(repvgg, tmp_path):
    proto = onnx.load(str(repvgg.res.path))
    init = proto.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value="../../etc/passwd")
    path = _save(proto, tmp_path, "escaping.onnx")
    with pytest.raises(InputError, match="escapes") as ei:
        exportchecks.check_onnx_valid(path, Rec(), label="user")
    assert str(path) in str(ei.value)


def test_user_onnx_at_another_input_size_is_an_input_error(repvgg, tmp_path):
    path = tmp_path / "at256.onnx"
    export_onnx(repvgg.model, path, input_size=256, opset=17, dynamic_batch=False)
    with pytest.raises(InputError, match=r"takes \[batch, 3, 224, 224\]") as ei:
        exportchecks.require_input_size(path, repvgg.card)
    assert str(path) in str(ei.value)


def test_user_onnx_from_manifest_is_checked_against_reference(repvgg, tmp_path):
    shutil.copy(repvgg.res.path, tmp_path / "mine.onnx")
    manifest = tmp_path / "artifacts.toml"
    manifest.write_text('[models.repvgg_a0]\nonnx = "mine.onnx"\n')
    lab = Lab(Settings(models=["repvgg_a0"], artifacts=manifest))
    path = lab.artifacts(lab.cards[0]).get("onnx")
    assert path == (tmp_path / "mine.onnx").resolve()
    exportchecks.require_input_size(path, lab.cards[0])
    rec = Rec()
    exportchecks.check_matches_reference(path, repvgg.model, repvgg.x[:IMAGES], rec, label=path.name)
    assert rec.figures["rel_max_error"] <= rec.figures["tolerance"]


# --- the cache -----------------------------------------------------------------------------

class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 1000)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_truncated_cached_export_is_detected_and_rebuilt(repvgg, tmp_path):
    fake_lab = SimpleNamespace(cache=ArtifactCache(tmp_path / "cache"))
    model = _Tiny().eval()
    first = exported(fake_lab, repvgg.card, model=model, tag="tiny")
    assert not first.cached
    assert exported(fake_lab, repvgg.card, model=model, tag="tiny").cached
    size = first.path.stat().st_size
    with open(first.path, "r+b") as f:
        f.truncate(size // 2)  # a crash or a full disk mid-copy
    again = exported(fake_lab, repvgg.card, model=model, tag="tiny")
    assert not again.cached, "a truncated model.onnx was served from the cache"
    assert again.path.stat().st_size == size
    onnx.checker.check_model(str(again.path), full_check=True)


def test_export_case_failure_is_a_check_failure_naming_exporter_and_opset(repvgg, monkeypatch):
    import harness.export.checks as ec

    def boom(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX opset version 7 is not supported")

    monkeypatch.setattr(ec, "exported", boom)
    with pytest.raises(CheckFailure) as ei:
        ec.export_case(None, repvgg.card, ExportCase("legacy", 7))
    msg = str(ei.value)
    assert "legacy export of repvgg_a0" in msg and "opset 7" in msg and "aten::foo" in msg, msg


def test_weights_beside_the_file_fail_self_contained_check(repvgg, tmp_path):
    proto = onnx.load(str(repvgg.res.path))
    path = tmp_path / "split.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="split.onnx.data")
    exportchecks.check_onnx_valid(path, Rec(), label="user file")  # allowed for a user's file
    with pytest.raises(CheckFailure) as ei:
        exportchecks.check_onnx_valid(path, Rec(), label="our export", self_contained=True)
    assert "split.onnx.data" in str(ei.value) and str(path) in str(ei.value)


# --- the layer search on its own -----------------------------------------------------------

class _Nested(nn.Module):
    """Scopes like HRNet's: ModuleLists (no forward, no scope) inside numbered containers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.Sequential(*[_Block() for _ in range(2)])
        self.fc = nn.Linear(8, 1000)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fuse = nn.ModuleList([nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8),
                                                                nn.Upsample(scale_factor=1.0, mode="nearest"))])])

    def forward(self, x):
        return torch.relu(x + self.fuse[0][0](x))


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    from harness.divergence import ModuleIndex

    model = _Nested().eval()
    with torch.no_grad():  # mild, non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("nested") / "nested.onnx"
    export_onnx(model, path, input_size=32, opset=17)
    return SimpleNamespace(model=model, path=path, index=ModuleIndex(model), x=torch.rand(2, 3, 32, 32))


def test_legacy_scope_names_resolve_to_full_module_names(nested):
    from harness.divergence import node_modules

    proto = onnx.load(str(nested.path))
    mods = {n.name: m for n, m in zip(proto.graph.node, node_modules(proto, nested.index))}
    conv = next(n for n in mods if n.endswith("/Conv") and "fuse" in n and "stages.1" in n)
    assert mods[conv] == "stages.1.fuse.0.0.0", (conv, mods[conv])


def _perturb_second_block_conv(path: Path, out: Path, rename: bool = False) -> str:
    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.op_type == "Conv" and "stages.1" in n.name)
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w[2] *= 1.01
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    name = node.name
    if rename:  # a tool that drops the exporter's scoped names
        for i, n in enumerate(proto.graph.node):
            n.name = f"n{i}"
        name = node.name
    onnx.save(proto, str(out))
    return name


def test_layer_search_names_perturbed_module(nested, tmp_path):
    from harness.divergence import first_divergence

    node = _perturb_second_block_conv(nested.path, tmp_path / "p.onnx")
    div = first_divergence(nested.model, tmp_path / "p.onnx", nested.x, k=10, minimum=1e-6)
    assert div.module == "stages.1.fuse.0.0.0" and div.node == node and div.mode == "scope", div
    assert "output channel(s) [2]" in div.hint and "stages.1.fuse.0.0.1" in div.hint, div.hint


def test_layer_search_without_scopes_falls_back_to_value_matching(nested, tmp_path):
    from harness.divergence import first_divergence

    node = _perturb_second_block_conv(nested.path, tmp_path / "anon.onnx", rename=True)
    div = first_divergence(nested.model, tmp_path / "anon.onnx", nested.x, k=10, minimum=1e-6)
    assert div.mode == "value" and div.module.startswith("stages.1.fuse.0.0") and div.node == node, div


def test_clean_file_has_no_diverging_layer(nested):
    from harness.divergence import first_divergence

    div = first_divergence(nested.model, nested.path, nested.x, k=10, minimum=1e-6)
    assert div.module is None and div.compared > 5, div


@pytest.mark.slow
def test_layer_search_reads_dynamo_scopes(lab, repvgg, tmp_path):
    """dynamo names nodes node_Conv_N; the module comes from pkg.torch.onnx.name_scopes."""
    res = exportchecks.export_case(lab, repvgg.card, ExportCase("dynamo", 17))
    proto = onnx.load(str(res.path))
    node = [n for n in proto.graph.node if n.op_type == "Conv"][40]
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w[5] *= 1.01
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = _save(proto, tmp_path, "dynamo_perturbed.onnx")
    with pytest.raises(CheckFailure) as ei:
        _numerics(path, repvgg)
    msg = str(ei.value)
    assert f"ONNX node '{node.name}' (Conv)" in msg and "weight differs" in msg and "[5]" in msg, msg
