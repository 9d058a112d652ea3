"""Shared pieces of the harness's own tests (imported as ``from _kit import ...``, like _latency_sim)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.figures import validate
from harness.testing import Recorder


def recorder() -> Recorder:
    """The kit's ``record`` stand-in (harness.testing.Recorder: ``record(**figures)``, figures in
    ``record.figures``), checking every name against the figure contract (harness/figures.py)."""
    return Recorder(check=lambda figures: validate(figures, strict=True))


def count_calls(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` (for the test) by a wrapper that appends 1 to the returned list on
    each call and then calls the original: how many builds, sessions or reports a test caused."""
    calls: list = []
    real = getattr(owner, name)

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, counting)
    return calls


# a suite whose second test kills its own process (an OOM kill, a lost CI runner)
DIES = '''
import os, signal

def test_fast(model_card, record):
    record(answer=42)

def test_worker_dies(model_card, record):
    record(about_to_die=1)
    os.kill(os.getpid(), signal.SIGKILL)

def test_after(model_card, record):
    record(after=1)
'''


def suite_dir(tmp_path: Path, source: str) -> Path:
    """A folder ``mysuite`` holding one suite file with ``source``, for ``zooconform run --suites``."""
    d = tmp_path / "mysuite"
    d.mkdir()
    (d / "test_mine.py").write_text(source)
    return d


def conv_classifier(path: Path, size: int, widths: tuple[int, int] = (16, 32), fc_scale: float = 6,
                    batch_dim: str | None = "batch", graph_name: str = "g") -> Path:
    """A small seeded ONNX classifier on [batch, 3, size, size]: two 3x3 convolutions
    (3 -> widths[0] -> widths[1] channels) with ReLU, global pooling and a 10-way MatMul whose
    weights are divided by ``fc_scale`` (logits of a realistic spread). Same arguments, same bytes."""
    rng = np.random.default_rng(0)

    def conv(name, cin, cout):
        return numpy_helper.from_array((rng.normal(size=(cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32), name)

    first, second = widths
    inits = [conv("w1", 3, first), conv("w2", first, second),
             numpy_helper.from_array((rng.normal(size=(second, 10)) / fc_scale).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, graph_name,
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_dim, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_dim, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
