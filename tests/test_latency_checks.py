"""Planted defects for the latency checks, measured for real on tiny ONNX models (well under a
millisecond a call, one thread, so even a loaded machine leaves most calls clean).

- a file with extra identity convolutions (same outputs, 3.7x the multiply-adds) fails the
  user-ONNX / own-export ratio, naming the extra work;
- the same file against itself never fails;
- the plugin reports a simulated busy machine as "inconclusive" (results.json too), not a fail.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.cache import Memo
from harness.compare import CheckFailure, Inconclusive
from harness.latency import checks as lc
from harness.latency import timing
from harness.latency.budgets import Choice, load_profile
from harness.testing import Recorder
from harness.zoo import load_zoo

SIZE, CH = 32, 16


Rec = Recorder  # the record fixture's stand-in (harness/testing.py)


def tiny_convnet() -> onnx.ModelProto:
    """conv 3->16, two conv 16->16 (3x3, ReLU), global pool, linear 16->10; input "input" [N,3,32,32]."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "input"
    for i, cin in enumerate((3, CH, CH)):
        w = (rng.standard_normal((CH, cin, 3, 3)) * (2 / (9 * cin)) ** 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(CH, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    inits += [numpy_helper.from_array(rng.standard_normal((10, CH)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def with_identity_convs(model: onnx.ModelProto, per_conv: int = 2) -> onnx.ModelProto:
    """The defect: after every Conv, ``per_conv`` 3x3 convs whose kernel is the identity (the
    centre tap 1 on the channel diagonal): the outputs stay bit-identical, the work grows."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    channels = {t.name: t.dims[0] for t in g.initializer}
    nodes = []
    for node in g.node:
        nodes.append(node)
        if node.op_type != "Conv":
            continue
        c = channels[node.input[1]]
        w = np.zeros((c, c, 3, 3), np.float32)
        w[np.arange(c), np.arange(c), 1, 1] = 1.0
        g.initializer.append(numpy_helper.from_array(w, f"{node.name}_identity"))
        final, prev = node.output[0], node.output[0] + "_pre"
        node.output[0] = prev
        for k in range(per_conv):
            out = final if k == per_conv - 1 else f"{final}_id{k}"
            nodes.append(helper.make_node("Conv", [prev, f"{node.name}_identity"], [out], name=f"{node.name}_id{k}",
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            prev = out
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("latency")
    base = tiny_convnet()
    onnx.save(base, folder / "own.onnx")
    onnx.save(with_identity_convs(base), folder / "user.onnx")
    return folder / "own.onnx", folder / "user.onnx"


def x1() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)


FAST = dict(settle_s=0.2)  # keep a re-measurement short in the harness's own tests


def test_onnx_work_counts_the_graphs_multiply_adds(files):
    own, user = files
    conv = lambda cin: CH * SIZE * SIZE * cin * 9  # noqa: E731  (MACs of one 3x3 conv at stride 1)
    macs, convs = lc.onnx_work(own)
    assert (macs, convs) == (conv(3) + 2 * conv(CH) + CH * 10, 3)
    macs_user, convs_user = lc.onnx_work(user)
    assert (macs_user, convs_user) == (macs + 6 * conv(CH), 9)


def test_the_planted_file_computes_the_same_outputs(files):
    from harness.runtimes import ort as runtime

    own, user = files
    x = np.random.default_rng(2).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    a = runtime.run(runtime.session(own, threads=1), x)
    b = runtime.run(runtime.session(user, threads=1), x)
    assert np.array_equal(a, b)


def test_extra_identity_convs_fail_the_ratio_budget(files):
    own, user = files
    rec = Rec()
    with pytest.raises(CheckFailure) as e:
        lc.check_onnx_not_slower(user, own, x1(), 1, rec, label="user.onnx", plan=lc.plan_for(1, **FAST))
    msg = str(e.value)
    assert "latency of user.onnx / the suite's own export at batch 1 = " in msg and "but should be <= 1.2" in msg
    assert f"{user} vs {own}" in msg and "[latency] user_over_own_max" in msg
    assert "does 3.74x the multiply-adds of the suite's export" in msg and "9 vs 3 conv nodes" in msg
    assert rec["ratio"] > 2.0 and rec["cpu_ratio"] > 2.0
    assert rec["num_gmacs_per_image"] > 3.7 * rec["den_gmacs_per_image"]


def test_the_same_file_never_fails_the_ratio_budget(files):
    own, _ = files
    rec = Rec()
    try:
        lc.check_onnx_not_slower(own, own, x1(), 1, rec, label="own.onnx", plan=lc.plan_for(1, **FAST))
    except Inconclusive as e:  # a loaded machine may leave too few clean calls to say: that is allowed
        assert not e.failing and str(e).startswith("contention:")
    assert 0.8 < rec["cpu_ratio"] < 1.25


def test_machine_peak_is_measured_once_per_session():
    memo = Memo()  # the lab's memos (Lab.memo)
    p1 = timing.machine_peak(1, matrix=128, calls=3, memo=memo)
    p2 = timing.machine_peak(1, matrix=128, calls=3, memo=memo)
    p3 = timing.machine_peak(1, matrix=128, calls=3, memo=memo)
    assert p1.gflops > 0 and p3 is p2  # a contended first figure is retried once, then kept
    assert timing.machine_peak(1, matrix=128, calls=3) is not p3  # no memo: measured on each call


def test_budget_for_names_why_no_budget_applies(tmp_path):
    card = load_zoo()["repvgg_a0"]
    p = tmp_path / "cpu-x.toml"
    p.write_text('[profile]\nprovider = "CPUExecutionProvider"\nthreads = 2\n[models.repvgg_a0]\nfp32 = { b1 = 9.0 }\n')
    prof = load_profile(p)
    choice = Choice(prof, "--profile", "--profile cpu-x")
    assert lc.budget_for(choice, card, "fp32", 1, lc.CPU, 2).ms == 9.0
    assert "run with --threads 2" in lc.budget_for(choice, card, "fp32", 1, lc.CPU, 4)
    assert "has no budget for repvgg_a0 int8 batch 1" in lc.budget_for(choice, card, "int8", 1, lc.CPU, 2)
    assert "holds ort budgets, this measurement is ort-cuda" in lc.budget_for(choice, card, "fp32", 1,
                                                                              "CUDAExecutionProvider", None)
    assert "holds ort budgets, this measurement is openvino" in lc.budget_for(choice, card, "fp32", 1, "openvino", 2)
    assert lc.budget_for(Choice(None, "none", "ratios only"), card, "fp32", 1, lc.CPU, 2) == "ratios only"


def test_plugin_reports_a_busy_machine_as_inconclusive_not_failed(pytester):
    """End to end through the plugin: the simulated busy machine's over-budget figure is the
    outcome "inconclusive" (terminal, exit code, results.json); a quiet one fails."""
    pytester.syspathinsert(str(Path(__file__).parent))
    pytester.makepyfile(test_sim=textwrap.dedent("""
        from pathlib import Path
        import pytest
        from _latency_sim import SimulatedMachine
        from harness.latency import checks as lc
        from harness.latency import timing
        from harness.latency.budgets import Budget

        @pytest.mark.parametrize("busy", [0.75, 0.0], ids=["busy", "quiet"])
        def test_latency(model_card, busy, record):
            machine = SimulatedMachine(work_s=0.010, busy=busy, neighbours=0.85 if busy else 0.0)
            m = timing.measure(machine.model(), timing.plan_from_tolerances(2), clocks=machine.clocks)
            record(**m.figures())
            lc.judge_absolute(m, Budget("p", model_card.id, "fp32", 1, 8.0, Path("p.toml"), False), record,
                              subject="sim")
    """))
    result = pytester.runpytest("-p", "harness.plugin", "--models", "repvgg_a0", f"--report-dir={pytester.path / 'rep'}")
    result.stdout.fnmatch_lines(["*1 failed*1 inconclusive*"])
    doc = json.loads((pytester.path / "rep" / "results.json").read_text())
    outcomes = {t["nodeid"].split("[")[1].rstrip("]"): t for t in doc["tests"]}
    busy, quiet = outcomes["repvgg_a0-busy"], outcomes["repvgg_a0-quiet"]
    assert busy["outcome"] == "inconclusive" and busy["message"].startswith("inconclusive: contention:")
    assert busy["figures"]["verdict"] == "inconclusive: contention" and busy["figures"]["quiet"] is False
    assert quiet["outcome"] == "failed" and "but should be <= 8 ms" in quiet["message"]


def test_interleaved_sessions_do_not_spin(files, monkeypatch):
    """Both sides of a ratio run with ORT's idle spinning off: spinning threads of the idle session
    took the CPUs of the other's calls (quiet machine, 2 threads: 47-67% of calls clean, one
    block ratio at 1.005 -> inconclusive); the default session (absolute budgets) keeps spinning."""
    from harness.runtimes import ort as runtime

    made = []
    real = runtime.session

    def spy(path, *a, **kw):
        sess = real(path, *a, **kw)
        made.append(sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning"))
        return sess

    monkeypatch.setattr(runtime, "session", spy)
    base = files[0]
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    plan = timing.Plan(threads=1, warmup=1, rounds=2, blocks=2, per_block=2, max_attempts=1)
    lc.interleave({"a": lc.Side(base, 1, "a"), "b": lc.Side(base, 1, "b")}, {1: x}, 1, plan=plan)
    assert made == ["0", "0"]
    so = real(base, threads=1).get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: ORT's default, spin
        so.get_session_config_entry("session.intra_op.allow_spinning")
