"""Runtimes as plug-ins (harness/runtimes, harness/export/crossruntime.py): planted faults.

- a runtime that perturbs one output channel fails the cross-runtime check, naming that
  runtime and the channel;
- a runtime whose outputs change run to run fails the determinism gate, naming it;
- a runtime whose package is missing is a clean skip with the reason;
- every runtime's ``prepare`` refuses a file whose external data escapes its folder;
- budget profiles name a runtime (``runtime = "openvino"``); the older ``provider`` still loads.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from harness import runtimes
from harness.compare import CheckFailure
from harness.errors import ConfigError, InputError
from harness.export import crossruntime
from harness.lab import Lab, Settings
from harness.runtimes.base import BaseSession


class Rec:
    def __init__(self):
        self.figures: dict = {}

    def __call__(self, **kw):
        self.figures.update(kw)


class _Wrapped(BaseSession):
    def __init__(self, inner, name: str, change):
        self.inner, self.change = inner, change
        self.runtime, self.effective_precision = name, inner.effective_precision
        self.settings, self.fixed_batch = f"{name} (wraps {inner.settings})", inner.fixed_batch

    def run(self, batch):
        return self.change(self.inner.run(batch))


class WrapperRuntime:
    """ORT's CPU EP with ``change`` applied to every output: a planted runtime fault."""

    exposes_intermediates = False
    runs_module = False
    device = "CPU"

    def __init__(self, name: str, change):
        self.name, self.change = name, change

    def available(self):
        return True, ""

    def supports(self, precision, batch=None):
        return True, ""

    def prepare(self, onnx_path, threads=None, precision="fp32", *, model=None):
        return _Wrapped(runtimes.get("ort").prepare(onnx_path, threads, precision), self.name, self.change)


@pytest.fixture
def planted():
    made = []

    def plant(rt):
        runtimes.register(rt)
        made.append(rt.name)
        return runtimes.spec(rt.name)

    yield plant
    for name in made:
        runtimes.unregister(name)


@pytest.fixture(scope="module")
def smoke():
    lab = Lab(Settings(models=["repvgg_a0"], threads=1))
    card = lab.cards[0]
    return SimpleNamespace(lab=lab, card=card)


CHANNEL = 417


def _perturb(out):
    out = out.copy()
    out[:, CHANNEL] += 0.02 * float(np.max(np.abs(out)))
    return out


def test_a_runtime_that_perturbs_one_channel_fails_the_cross_runtime_check_naming_it(smoke, planted):
    bad = planted(WrapperRuntime("ort-perturbed", _perturb))
    rec = Rec()
    with pytest.raises(CheckFailure) as e:
        crossruntime.check_runtimes_agree(smoke.card, smoke.lab, rec, runtimes.spec("ort"), bad)
    msg = str(e.value)
    assert "runtime ort-perturbed" in msg and f"output channel(s) [{CHANNEL}" in msg
    assert "ort-perturbed exposes no intermediates" in msg  # what was compared, since no layer can be named
    assert rec.figures["runtime_departing"] == "ort-perturbed" and rec.figures["worst_channels"][0] == CHANNEL
    assert rec.figures["rel_max_error"] > rec.figures["tolerance"]


def test_runtimes_that_agree_pass_and_torch_against_ort_names_no_layer(smoke):
    rec = Rec()
    crossruntime.check_runtimes_agree(smoke.card, smoke.lab, rec, runtimes.spec("ort"), runtimes.spec("torch"))
    assert rec.figures["runtime_b_settings"].startswith("torch") and rec.figures["noise_floor_kind"] == "fp64 noise floor"
    assert rec.figures["rel_max_error"] <= rec.figures["tolerance"]


def test_a_perturbed_torch_comparison_names_the_first_diverging_layer(smoke, planted, monkeypatch):
    """ORT vs torch disagree because the file is wrong: ORT exposes intermediates, the layer is named."""
    import torch

    lab, card = smoke.lab, smoke.card
    model = lab.reference(card)
    path, label = crossruntime.file_under_test(lab, card)
    bad_model = __import__("copy").deepcopy(model)
    with torch.no_grad():
        conv = next(m for n, m in bad_model.named_modules() if isinstance(m, torch.nn.Conv2d) and "stages.1" in n)
        conv.weight[0].mul_(1.5)
    monkeypatch.setattr(lab, "reference", lambda c: bad_model)
    rec = Rec()
    with pytest.raises(CheckFailure) as e:
        crossruntime.check_runtimes_agree(card, lab, rec, runtimes.spec("ort"), runtimes.spec("torch"),
                                          path=path, label=label)
    assert "first diverging layer" in str(e.value) and "stages.1" in str(rec.figures.get("diverging_module"))


def test_a_non_deterministic_runtime_fails_the_determinism_gate_naming_it(smoke, planted):
    rng = np.random.default_rng(0)
    noisy = planted(WrapperRuntime("ort-noisy", lambda o: o + rng.normal(0, 1e-4 * float(np.max(np.abs(o))),
                                                                        o.shape).astype(np.float32)))
    rec = Rec()
    with pytest.raises(CheckFailure) as e:
        crossruntime.check_deterministic(smoke.card, smoke.lab, rec, noisy, threads=2)
    msg = str(e.value)
    assert "run-to-run spread" in msg and "runtime ort-noisy is not deterministic" in msg
    assert rec.figures["spread_max"] > rec.figures["determinism_bound"]
    assert rec.figures["bit_identical_same_session"] is False


def test_ort_is_deterministic_within_its_floor(smoke):
    rec = Rec()
    figures = crossruntime.check_deterministic(smoke.card, smoke.lab, rec, runtimes.spec("ort"), threads=2)
    assert figures["spread_same_session"] == 0.0 and figures["bit_identical_fresh_session"]
    assert figures["spread_max"] <= figures["determinism_bound"]


def test_openvino_absent_is_a_clean_skip_with_the_reason(monkeypatch):
    from harness import plugin

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    ok, why = runtimes.get("openvino").available()
    assert not ok and "openvino package is not installed" in why and "pip install openvino" in why
    with pytest.raises(pytest.skip.Exception, match="runtime openvino is not available here: the openvino package"):
        plugin._available_spec("openvino")


def test_unknown_runtime_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown runtime 'onnxrt'.*known: ort, ort-cuda"):
        runtimes.parse("ort,onnxrt")
    assert [s.id for s in runtimes.parse("ort, openvino:bf16,ort")] == ["ort", "openvino:bf16"]


def test_openvino_reads_back_its_effective_precision(smoke):
    pytest.importorskip("openvino")
    from harness.export.checks import fp32_file_under_test

    path, _ = fp32_file_under_test(smoke.lab, smoke.card)
    sess = runtimes.spec("openvino").prepare(path, 1)
    assert sess.effective_precision == "fp32" and "asked f32" in sess.settings
    low = runtimes.spec("openvino:bf16").prepare(path, 1)
    assert low.effective_precision in ("bf16", "fp32")  # fp32 on a CPU without bf16: the hint is ignored
    x, _ = smoke.lab.inputs(smoke.card, "eval", limit=2)
    ref = runtimes.spec("ort").prepare(path, 1).run(x.numpy())
    out = sess.run(x.numpy())
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-4


# --- guarded loading on every path ---------------------------------------------------------

def _escaping_file(tmp_path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [w])
    model = helper.make_model(graph)
    t = model.graph.initializer[0]
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../outside.bin")
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", ["ort", "openvino", "torch", "files"])
def test_every_runtime_refuses_external_data_that_escapes_its_folder(tmp_path, name, monkeypatch):
    monkeypatch.setenv("ZOOCONFORM_FILES_COMMAND", "true {model} {datalist} {out}")
    rt = runtimes.get(name)
    ok, why = rt.available()
    if not ok:
        pytest.skip(why)
    path = _escaping_file(tmp_path)
    with pytest.raises(InputError, match="escapes"):
        rt.prepare(path, 1, model=object())


# --- budget profiles per runtime ----------------------------------------------------------

def _profile(tmp_path: Path, head: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(f"[profile]\n{head}\n[models.repvgg_a0]\nfp32 = {{ b1 = 9.0 }}\n")
    return p


def test_profiles_name_their_runtime_and_the_older_provider_key_still_loads(tmp_path):
    from harness.latency.budgets import load_profile

    assert load_profile(_profile(tmp_path, 'runtime = "openvino"\nthreads = 2')).runtime == "openvino"
    old = load_profile(_profile(tmp_path, 'provider = "CPUExecutionProvider"\nthreads = 2'))
    assert old.runtime == "ort" and old.is_cpu
    assert load_profile(_profile(tmp_path, 'provider = "TensorrtExecutionProvider"')).runtime == "ort-trt"
    with pytest.raises(ConfigError, match="runtime"):
        load_profile(_profile(tmp_path, 'runtime = "onnxrt"\nthreads = 2'))
    with pytest.raises(ConfigError, match="is runtime 'ort'"):
        load_profile(_profile(tmp_path, 'runtime = "openvino"\nprovider = "CPUExecutionProvider"\nthreads = 2'))
    with pytest.raises(ConfigError, match="threads"):
        load_profile(_profile(tmp_path, 'runtime = "openvino"'))
    shipped = load_profile(Path(__file__).resolve().parents[1] / "fixtures" / "budgets" / "cpu-2core.toml")
    assert shipped.runtime == "ort"


# --- the report: a row per runtime ----------------------------------------------------------

def test_the_report_gets_a_row_per_runtime():
    from harness.report.views import build_views

    def t(check, runtime=None, **figures):
        rec = {"nodeid": f"suites/test_x.py::{check}[repvgg_a0-{runtime}]", "outcome": "passed", "model": "repvgg_a0",
               "suite": "test_export", "check": check, "figures": figures}
        if runtime:
            rec["runtime"] = runtime
        return rec

    doc = {"tests": [t("test_export_matches_torch", "ort", rel_max_error=1e-6, noise_floor_fp64=1e-6),
                     t("test_export_matches_torch", "openvino", rel_max_error=2e-6, noise_floor_fp64=1e-6),
                     t("test_runtimes_agree", None, rel_max_error=2e-6)]}
    views, _ = build_views(doc, zoo={})
    assert [v.model for v in views] == ["repvgg_a0 · ort", "repvgg_a0 · openvino"]
    assert len(views[0].tests) == 2 and len(views[1].tests) == 1  # the pair check goes with the first runtime
    one, _ = build_views({"tests": doc["tests"][:1]}, zoo={})
    assert [v.model for v in one] == ["repvgg_a0"]  # one runtime: the table as before


# --- any runtime through files (the bridge's formats) --------------------------------------

RUNNER = '''
import sys, pathlib, numpy as np, onnxruntime as ort
model, datalist, out = sys.argv[1:4]
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
for line in pathlib.Path(datalist).read_text().split():
    x = np.load(line)["input_0"]
    np.savez(pathlib.Path(out) / (pathlib.Path(line).stem + ".npz"), output_0=s.run(None, {name: x})[0])
'''


def test_the_files_runtime_runs_an_external_command_over_a_datalist(smoke, tmp_path, monkeypatch):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    monkeypatch.setenv("ZOOCONFORM_FILES_COMMAND", f"{sys.executable} {script} {{model}} {{datalist}} {{out}}")
    rec = Rec()
    crossruntime.check_runtimes_agree(smoke.card, smoke.lab, rec, runtimes.spec("ort"), runtimes.spec("files"))
    assert rec.figures["rel_max_error"] == 0.0  # the same ORT, one image at a time: bit-identical here
    assert "external command" in rec.figures["runtime_b_settings"]


def test_the_files_runtime_without_a_command_says_what_to_set(monkeypatch):
    monkeypatch.delenv("ZOOCONFORM_FILES_COMMAND", raising=False)
    ok, why = runtimes.get("files").available()
    assert not ok and "ZOOCONFORM_FILES_COMMAND is not set" in why
