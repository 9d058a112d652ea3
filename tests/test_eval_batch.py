"""The eval's run batch: images per runtime call, sized by the file's peak activations so that a
big model's evaluation fits a small runner (resnest269 at 416 px and 50 images a call held
10.8 GB in one process), while every figure stays what it was at 50 a call.

- the peak counts what is alive at once (a skip connection keeps its input), not every tensor;
- a bigger image gets a smaller run batch, within [1, EVAL_BATCH];
- the fp32 logits, their noise-floor twins and the int8 runs are bit-identical at any run batch:
  the noise is drawn per block of EVAL_BATCH images (seed = block index), not per call.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import torch
from _kit import conv_classifier
from onnx import TensorProto, helper

from harness import onnxfile
from harness.data import ImageSet, Sample
from harness.quant import checks as qc
from harness.runtimes.ort import OrtSession
from harness.testing import FakeLab

IMAGE_BYTES = 3 * 8 * 8 * 4  # one float [3, 8, 8] activation


def _save(nodes, path: Path, inits=(), size=8, channels=3, out_shape=None) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             out_shape or ["batch", channels, size, size])], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_peak_counts_what_is_alive_at_once_not_every_tensor(tmp_path):
    chain = _save([helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                   helper.make_node("Relu", ["b"], ["logits"])], tmp_path / "chain.onnx")
    # each step holds its input and its output: 2 tensors, though the graph makes 4
    assert onnxfile.peak_activation_bytes_per_image(chain) == 2 * IMAGE_BYTES
    skip = _save([helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Add", ["a", "input"], ["b"]),
                  helper.make_node("Relu", ["b"], ["logits"])], tmp_path / "skip.onnx")
    # the residual keeps the input alive until the Add: input, a and b at once
    assert onnxfile.peak_activation_bytes_per_image(skip) == 3 * IMAGE_BYTES


def test_a_bigger_image_gets_a_smaller_run_batch_within_one_block(tmp_path, monkeypatch):
    small, big = conv_classifier(tmp_path / "s.onnx", 16), conv_classifier(tmp_path / "b.onnx", 32)
    per_small, per_big = (onnxfile.peak_activation_bytes_per_image(p) for p in (small, big))
    # the peak: the second Relu's input and output at once (32 + 32 channels); the pooled tail is
    # freed by then, so a 4x image is exactly 4x
    assert per_small == (32 + 32) * 16 * 16 * 4
    assert per_big == 4 * per_small
    budget_mb = 1
    monkeypatch.setattr(qc, "EVAL_MEMORY_BUDGET_MB", budget_mb)
    assert qc.eval_run_batch(None, small) == min(qc.EVAL_BATCH, 2**20 // per_small) == 16
    assert qc.eval_run_batch(None, big) == 2**20 // per_big == 4
    monkeypatch.setattr(qc, "EVAL_MEMORY_BUDGET_MB", 1024)
    assert qc.eval_run_batch(None, big) == qc.EVAL_BATCH  # never past a block
    monkeypatch.setattr(qc, "EVAL_MEMORY_BUDGET_MB", 0)
    assert qc.eval_run_batch(None, big) == 1  # never under one image


def _eval_lab(x: torch.Tensor) -> FakeLab:
    samples = [Sample(f"img{i}", f"img{i}", lambda: None) for i in range(len(x))]
    return FakeLab(images={"eval": ImageSet(samples, "embedded:eval")}, inputs=lambda card, split, limit: (x, samples),
                   settings=types.SimpleNamespace(threads=1, imagenet=None))


def test_the_logits_and_the_noise_floor_are_the_same_at_any_run_batch(tmp_path, monkeypatch):
    """120 images: blocks of 50, 50, 20; a run batch of 7 cuts each block unevenly."""
    fp32 = conv_classifier(tmp_path / "net.onnx", 32)
    card = types.SimpleNamespace(id="net", preprocess=types.SimpleNamespace(std=(0.229, 0.224, 0.225)))
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(120, 3, 32, 32)).astype(np.float32))
    runs, original_run = {}, OrtSession.run
    for batch in (qc.EVAL_BATCH, 7):
        monkeypatch.setattr(qc, "EVAL_MEMORY_BUDGET_MB",
                            (batch + 0.5) * onnxfile.peak_activation_bytes_per_image(fp32) / 2**20)
        assert qc.eval_run_batch(None, fp32) == batch
        calls: list[int] = []
        monkeypatch.setattr(OrtSession, "run", lambda self, xb, calls=calls: calls.append(len(xb)) or original_run(self, xb))
        runs[batch] = qc.fp32_run(_eval_lab(x), card, fp32, with_noise=True)
        assert max(calls) == batch  # the runtime was fed that many images a call
    assert np.array_equal(runs[7].fp32, runs[qc.EVAL_BATCH].fp32)
    assert np.array_equal(runs[7].fp32_noisy, runs[qc.EVAL_BATCH].fp32_noisy)
    assert not np.array_equal(runs[7].fp32, runs[7].fp32_noisy)  # the floor's noise did reach the logits


def test_the_int8_simulation_and_kernels_give_the_same_rows_at_any_run_batch(tmp_path, monkeypatch):
    from onnxruntime.quantization import QuantFormat, quantize_static

    from harness.quant.quantize import ArrayCalibrationReader

    fp32 = conv_classifier(tmp_path / "net.onnx", 32)
    x = np.random.default_rng(4).normal(size=(60, 3, 32, 32)).astype(np.float32)
    int8 = tmp_path / "net.int8.onnx"
    quantize_static(str(fp32), str(int8), ArrayCalibrationReader(x[:20], batch=10), quant_format=QuantFormat.QDQ)
    rows = {}
    for batch in (qc.EVAL_BATCH, 7):
        monkeypatch.setattr(qc, "EVAL_MEMORY_BUDGET_MB",
                            (batch + 0.5) * onnxfile.peak_activation_bytes_per_image(int8) / 2**20)
        run = qc._default_run_int8(1)
        rows[batch] = [run(int8, optimization, x) for optimization in ("none", "all")]
    for at_7, at_block in zip(rows[7], rows[qc.EVAL_BATCH]):
        assert np.array_equal(at_7, at_block)
