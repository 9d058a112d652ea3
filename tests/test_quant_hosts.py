"""Verdicts on another host class, for real: ONNX Runtime under qemu-user with an emulated
AVX2-only CPU (``qemu-x86_64 -cpu Haswell``: no AVX-512, no VNNI), so ORT runs the saturating
U8S8 kernels of issue 15's host on whatever machine runs the tests.

A small conv net keeps emulation to seconds. What must hold on every host:
- verdict (a)'s QDQ float simulation is bit-identical natively and on the emulated host;
- verdict (b) fails a full-range U8S8 file on the emulated AVX2 host, naming the saturation and
  measuring the 7-bit copy (which passes there), and passes a reduce_range file there;
- on this host, both pass when its kernels do not saturate (VNNI or AMX).
CI installs qemu-user (.ci/run); without it these tests skip and say how to get it.
"""
from __future__ import annotations

import numpy as np
import pytest
from _kit import conv_classifier

from harness import emulate
from harness.host import cpu_facts, u8s8_may_saturate
from harness.quant import checks as qc
from harness.tolerances import tolerance

pytestmark = pytest.mark.skipif(emulate.qemu() is None,
                                reason="qemu-user not installed (apt-get install qemu-user; CI installs it) "
                                       "or not an x86-64 machine")
HASWELL = emulate.CPU_MODELS["Haswell"]
IMAGES = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """fp32, int8 with full-range weights (quantize_static's default), int8 with reduce_range."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("hosts")
    fp32 = folder / "tiny.onnx"
    conv_classifier(fp32, 32, widths=(32, 64), fc_scale=8, batch_dim=None, graph_name="tiny")
    x = np.random.default_rng(1).uniform(-2, 2, size=(32, 3, 32, 32)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + 8]} for i in range(0, 16, 8)])

        def get_next(self):
            return next(self.batches, None)

    out = {"fp32": fp32}
    for name, rr in (("full", False), ("reduced", True)):
        out[name] = folder / f"tiny.int8.{name}.onnx"
        quantize_static(str(fp32), str(out[name]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=rr, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    x_eval = x[16:16 + IMAGES]
    native = qc._default_run_int8(2)
    out["x"] = x_eval
    out["fp32_logits"] = native(fp32, "all", x_eval)
    out["noisy_logits"] = native(fp32, "all", qc.grey_level_noise(x_eval, (0.25, 0.25, 0.25), 2))
    return out


@pytest.fixture(scope="module")
def haswell():
    return emulate.emulated_runner("Haswell", threads=2)


def _limit() -> float:
    return tolerance("quant", "kernel_vs_simulation_max")


def test_the_qdq_float_simulation_is_the_same_on_an_avx2_host(files, haswell):
    native = qc._default_run_int8(2)
    for name in ("full", "reduced"):
        assert np.array_equal(native(files[name], "none", files["x"]), haswell(files[name], "none", files["x"])), name


def test_full_range_u8s8_fails_verdict_b_on_an_avx2_host_naming_saturation_and_the_measured_fix(files, haswell):
    x, fp32, noisy = files["x"], files["fp32_logits"], files["noisy_logits"]
    m = qc.measure_kernels(files["full"], x, fp32, noisy, haswell)
    assert m.ratio > _limit(), m.figures()  # measured 11.5x on 64 images (2026-12-01)
    recorded = {}
    cause = qc.kernel_cause(files["full"], qc.int8_format(files["full"]), HASWELL, x, fp32, noisy, haswell,
                            lambda **k: recorded.update(k), _limit())
    assert "x86-avx2, no VNNI" in cause and "VPMADDUBSW" in cause and "reduce_range=True" in cause
    assert recorded["reduce_range_kernel_error_over_quantization_error"] <= _limit(), recorded


def test_a_reduce_range_file_passes_verdict_b_on_an_avx2_host(files, haswell):
    m = qc.measure_kernels(files["reduced"], files["x"], files["fp32_logits"], files["noisy_logits"], haswell)
    assert m.ratio <= _limit(), m.figures()


def test_both_files_pass_verdict_b_natively_where_kernels_do_not_saturate(files):
    if u8s8_may_saturate(cpu_facts()):
        pytest.skip("this host's U8S8 kernels saturate: the emulated-host tests above are its case")
    native = qc._default_run_int8(2)
    for name in ("full", "reduced"):
        m = qc.measure_kernels(files[name], files["x"], files["fp32_logits"], files["noisy_logits"], native)
        assert m.ratio <= _limit(), (name, m.figures())
