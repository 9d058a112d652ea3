"""The latency measurement and verdicts on a simulated machine (deterministic clocks, no real
timing, so nothing here depends on how loaded the machine running the tests is).

A busy machine must give "inconclusive: contention", never a fail; a quiet one over budget
must fail naming the budget; re-measurement must recover from a neighbour's burst.
"""
from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
from _latency_sim import SimulatedMachine

from harness.compare import CheckFailure, Inconclusive
from harness.latency import checks as lc
from harness.latency import timing
from harness.latency.budgets import Budget
from harness.testing import Recorder

PLAN = timing.plan_from_tolerances(2)


Rec = Recorder  # the record fixture's stand-in (harness/testing.py)


def budget(ms: float) -> Budget:
    return Budget("cpu-test", "repvgg_a0", "fp32", 1, ms, Path("fixtures/budgets/cpu-test.toml"), False)


def measure(machine: SimulatedMachine, scale: float = 1.0, **plan) -> timing.Measurement:
    return timing.measure(machine.model(scale), timing.plan_from_tolerances(machine.threads, **plan),
                          clocks=machine.clocks, name="sim")


# --- statistics ---------------------------------------------------------------------------

def test_quantiles_match_numpy():
    v = sorted(np.random.default_rng(0).lognormal(size=37).tolist())
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert timing.quantile(v, q) == pytest.approx(float(np.percentile(v, 100 * q)))


def test_median_interval_is_the_binomial_order_statistic_interval():
    v = list(range(1, 21))
    low, high, cov = timing.median_interval(v, 0.95)
    assert (low, high) == (6, 15)  # the textbook ranks for n = 20
    assert cov == pytest.approx(1 - 2 * sum(math.comb(20, k) for k in range(6)) / 2 ** 20)
    assert cov >= 0.95


def test_robust_cv_ignores_one_outlier_and_classic_cv_does_not():
    s = timing.Spread.of([10.0] * 9 + [11.0] * 10 + [100.0])
    assert s.cv < 0.1 and s.cv_classic > 0.5


# --- quiet, busy, burst -------------------------------------------------------------------

def test_quiet_machine_is_measured_once_and_judged():
    m = measure(SimulatedMachine(work_s=0.010, jitter=0.02))
    assert m.quiet and len(m.attempts) == 1
    f = m.figures()
    assert f["median_ms"] == pytest.approx(10.0, rel=0.02)
    assert f["cpu_per_wall_median"] == pytest.approx(2.0)  # N threads busy for the whole call
    assert f["clean_share"] == 1.0 and f["neighbour_cpu_share"] == 0.0 and f["quiet"] is True
    for key in ("q1_ms", "q3_ms", "iqr_ms", "p90_ms", "cv", "cv_classic", "median_ci_ms", "run_delay_share_median"):
        assert key in f


def test_busy_machine_is_not_remeasured_while_neighbours_stay():
    m = measure(SimulatedMachine(busy=0.75, neighbours=0.85))
    assert not m.quiet and len(m.attempts) == 1
    assert "still used 85% of the CPUs" in m.extra["remeasure"]
    f = m.figures()
    assert f["clean_share"] == 0.0 and f["cpu_per_wall_median"] == pytest.approx(0.5)
    assert "run delay" in f["noise"] and "other processes used 85%" in f["noise"]


def test_a_burst_is_remeasured_and_the_quiet_attempt_kept():
    plan = timing.plan_from_tolerances(2)
    burst = plan.warmup + plan.rounds  # the first attempt, then quiet
    machine = SimulatedMachine(work_s=0.010, phases=[(burst, 0.6, 0.8), (10 ** 9, 0.0, 0.0)])
    m = measure(machine)
    assert len(m.attempts) == 2 and m.chosen == 1 and m.quiet
    assert m.figures()["attempt_medians_ms"][0] == pytest.approx(25.0)
    assert m.median_s == pytest.approx(0.010)


def test_our_own_extra_threads_are_not_taken_for_a_neighbour():
    # 4 threads on 2 CPUs: each thread waits half the time for our own others
    machine = SimulatedMachine(threads=4, busy=0.5, neighbours=0.0)
    m = timing.measure(machine.model(), timing.plan_from_tolerances(4, cpus=2), clocks=machine.clocks)
    assert m.quiet
    assert not timing.measure(machine.model(), timing.plan_from_tolerances(4, cpus=4), clocks=machine.clocks).quiet


def test_without_schedstat_cpu_time_over_wall_tells_contention():
    quiet = measure(SimulatedMachine(schedstat=False))
    busy = measure(SimulatedMachine(busy=0.5, neighbours=0.0, schedstat=False))
    assert quiet.quiet and quiet.figures()["run_delay_share_median"] is None
    assert not busy.quiet and "CPU time / wall < 0.8 x 2 threads" in busy.figures()["noise"]


# --- absolute verdicts --------------------------------------------------------------------

def test_simulated_busy_machine_over_budget_is_inconclusive_not_a_fail():
    m = measure(SimulatedMachine(work_s=0.010, busy=0.75, neighbours=0.85))  # 40 ms measured, 10 ms of work
    rec = Rec()
    with pytest.raises(Inconclusive) as e:
        lc.judge_absolute(m, budget(20.0), rec, subject="repvgg_a0 fp32 batch 1")
    assert e.value.failing is False
    msg = str(e.value)
    assert msg.startswith("contention:") and "40.000 ms" in msg and "budget 20 ms" in msg
    assert "cpu-test.toml [models.repvgg_a0.fp32.b1]" in msg and "still used 85%" in msg
    assert e.value.figures["verdict"] == "inconclusive: contention"


def test_quiet_machine_over_budget_fails_naming_the_budget_and_the_roofline():
    m = measure(SimulatedMachine(work_s=0.010))
    m.flops_per_call = 2.0e9
    m.peak = timing.Peak(400.0, 2, True, 2048, 12)
    rec = Rec()
    with pytest.raises(CheckFailure) as e:
        lc.judge_absolute(m, budget(8.0), rec, subject="repvgg_a0 fp32 batch 1", file="model.onnx")
    msg = str(e.value)
    assert "median latency of repvgg_a0 fp32 batch 1 = 10.000 ms, but should be <= 8 ms" in msg
    assert "[cpu-test.toml [models.repvgg_a0.fp32.b1]; model.onnx]" in msg
    assert "+25% over the budget on a quiet machine" in msg and "200.0 GFLOP/s achieved = 50%" in msg
    assert rec["over_budget_rel"] == pytest.approx(0.25)


def test_busy_machine_within_budget_even_inflated_passes():
    m = measure(SimulatedMachine(work_s=0.010, busy=0.5, neighbours=0.85))  # 20 ms measured
    rec = Rec()
    lc.judge_absolute(m, budget(30.0), rec, subject="x")
    assert rec["verdict"].startswith("contended, within budget")


# --- interleaved ratios -------------------------------------------------------------------

def interleaved(machine: SimulatedMachine, scales: dict[str, float]) -> timing.Interleaved:
    return timing.measure_interleaved({n: machine.model(s) for n, s in scales.items()},
                                      timing.plan_from_tolerances(machine.threads), clocks=machine.clocks)


def test_interleaved_ratio_and_its_block_range():
    run = interleaved(SimulatedMachine(jitter=0.02), {"slow": 3.0, "base": 1.0})
    r = run.ratio("slow", "base")
    assert r.quiet and r.wall == pytest.approx(3.0, rel=0.01) and r.cpu == pytest.approx(3.0, rel=0.01)
    # no target: the sequential rule has nothing to decide, every block is measured
    assert r.blocks == PLAN.blocks
    # the block ratios' interval of the median at ci_level: for 9 blocks ranks 2..8
    low, high, cov = timing.median_interval(sorted(r.wall_blocks), PLAN.ci_level)
    assert (r.wall_low, r.wall_high, r.coverage) == (low, high, cov) and cov >= PLAN.ci_level
    assert PLAN.blocks < 9 or (low, high) == tuple(sorted(r.wall_blocks)[1:-1:len(r.wall_blocks) - 3])
    assert run.stop is not None and run.stop.reason == "max" and run.stop.samples == PLAN.blocks
    per_image = run.ratio("slow", "base", num_items=8)
    assert per_image.wall == pytest.approx(3.0 / 8, rel=0.01)


def test_busy_machine_fails_a_ratio_only_when_every_block_and_cpu_time_agree():
    machine = SimulatedMachine(busy=0.7, neighbours=0.85)
    r = interleaved(machine, {"slow": 3.0, "base": 1.0}).ratio("slow", "base")
    assert not r.quiet
    with pytest.raises(CheckFailure, match=rf"measured under contention, but the 96% interval of the {PLAN.blocks} block ratios"):
        lc.judge_ratio(r, 1.2, "user_over_own_max", Rec(), what="w", where="a.onnx vs b.onnx", cause="3x work")


def test_busy_machine_ratio_near_the_limit_is_inconclusive():
    # the load changes between blocks (one unrecorded + per_block calls each): the wall-time blocks straddle the limit
    block = 1 + PLAN.per_block
    machine = SimulatedMachine(phases=[(2 * PLAN.warmup, 0.0, 0.9)] + [(block, 0.7, 0.9), (block, 0.0, 0.9)] * 80)
    r = interleaved(machine, {"a": 1.1, "b": 1.0}).ratio("a", "b")
    assert not r.quiet and r.wall_low < 1.2 < r.wall_high
    with pytest.raises(Inconclusive) as e:
        lc.judge_ratio(r, 1.2, "user_over_own_max", Rec(), what="w", where="a vs b", cause="c")
    assert e.value.failing is False and str(e.value).startswith("contention:")


def test_quiet_ratio_over_the_limit_fails_with_cause_and_place():
    r = interleaved(SimulatedMachine(), {"a": 1.5, "b": 1.0}).ratio("a", "b")
    with pytest.raises(CheckFailure) as e:
        lc.judge_ratio(r, 1.2, "user_over_own_max", Rec(), what="latency of x / own export", where="x.onnx vs own.onnx",
                       cause="x does 1.50x the multiply-adds")
    msg = str(e.value)
    assert "latency of x / own export = 1.500, but should be <= 1.2" in msg
    assert "x.onnx vs own.onnx; fixtures/tolerances.toml [latency] user_over_own_max" in msg
    assert "cause: x does 1.50x the multiply-adds" in msg


# --- throughput -----------------------------------------------------------------------------

def test_concurrent_throughput_counts_images_over_the_window():
    machine = SimulatedMachine(work_s=0.010, threads=1)
    # one machine clock shared by two "instances": they run one after the other here, so
    # the window is the sum of both instances' calls
    c = timing.measure_concurrent([machine.model(), machine.model()], 10, timing.plan_from_tolerances(2),
                                  items_per_call=8, clocks=machine.clocks)
    assert c.instances == 2 and c.items_per_s == pytest.approx(2 * 10 * 8 / c.wall_s)
    assert c.figures()["images_per_s"] > 0


def test_throughput_below_budget_is_inconclusive_on_a_busy_machine_and_fails_on_a_quiet_one():
    def fake(ips, quiet):
        return types.SimpleNamespace(items_per_s=ips, quiet=quiet, instances=2, items_per_call=8,
                                     noise=[] if quiet else ["busy"], remeasure=None)
    with pytest.raises(Inconclusive):
        lc.judge_throughput(fake(50.0, False), 100.0, Rec(), subject="m", where="p.toml")
    with pytest.raises(CheckFailure, match=r"throughput of m \(2 sessions x batch 8\) = 50.0 images/s, but should be >= 100"):
        lc.judge_throughput(fake(50.0, True), 100.0, Rec(), subject="m", where="p.toml")
    lc.judge_throughput(fake(150.0, False), 100.0, Rec(), subject="m", where="p.toml")


# --- pytest-benchmark -----------------------------------------------------------------------

class StubBenchmark:
    """pytest-benchmark's fixture as the checks use it: pedantic(), extra_info, stats.stats."""

    disabled = False

    def __init__(self):
        self.extra_info = {}
        self.stats = None
        self.pedantic_calls = 0

    def pedantic(self, target, warmup_rounds, rounds, iterations):
        self.stats = types.SimpleNamespace(stats=None)
        for _ in range(warmup_rounds + rounds):
            target()
            self.pedantic_calls += 1


def test_first_attempt_runs_in_pedantic_mode_and_the_json_gets_the_judged_calls():
    machine = SimulatedMachine(work_s=0.004)
    bench = StubBenchmark()
    m = timing.measure(machine.model(), PLAN, clocks=machine.clocks, first_runner=lc.pedantic_runner(bench))
    # pedantic mode calls warmup + rounds times; the calls after the sequential stop are no-ops
    assert bench.pedantic_calls == PLAN.warmup + PLAN.rounds
    assert m.stop is not None and m.stop.reason == "tight" and len(m.attempt.calls) == m.stop.samples < PLAN.rounds
    assert machine.calls == PLAN.warmup + m.stop.samples
    lc.publish_benchmark(bench, m, {"median_ms": 4.0, "model": "repvgg_a0", "noise": None})
    assert bench.stats.stats.data == [c.wall_s for c in m.attempt.calls]
    assert bench.extra_info == {"median_ms": 4.0, "model": "repvgg_a0"}


def test_disabled_benchmark_falls_back_to_the_plain_loop():
    bench = StubBenchmark()
    bench.disabled = True  # under xdist pytest-benchmark disables itself
    assert lc.pedantic_runner(bench) is None and lc.pedantic_runner(None) is None


def test_a_contended_ratio_just_over_the_limit_is_inconclusive_not_a_fail():
    """Measured: a neighbour's cache traffic took repvgg_a0 batch 8 / batch 1 from 0.91 (quiet) to
    blocks 1.08-1.16 and CPU time 1.06-1.14 (contended); only beyond limit x 1.3 is it a fail."""
    r = timing.Ratio("num", "den", 1.128, 1.078, 1.155, 1.111, 1.060, 1.144, 6, 0.97, False, ["num: only 0% clean"],
                     [1.1] * 6, [1.1] * 6)
    with pytest.raises(Inconclusive) as e:
        lc.judge_ratio(r, 1.0, "batch8_per_image_over_batch1_max", Rec(), what="w", where="a vs b", cause="c")
    assert e.value.failing is False and "a contended ratio fails only beyond 1.3 (limit x 1.3" in str(e.value)
    far = timing.Ratio("num", "den", 1.5, 1.4, 1.6, 1.5, 1.4, 1.6, 6, 0.97, False, ["busy"], [1.5] * 6, [1.5] * 6)
    with pytest.raises(CheckFailure, match=r"over the limit x 1.3 = 1.3, \[latency\] contended_ratio_margin"):
        lc.judge_ratio(far, 1.0, "batch8_per_image_over_batch1_max", Rec(), what="w", where="a vs b", cause="c")


def test_a_quiet_ratio_just_over_the_limit_with_the_limit_in_its_interval_is_borderline_not_a_fail():
    """CI, 2026-12-03: hrnet_w18_small_v1 batch 8 / batch 1 measured quiet at 1.006, block
    ratios 0.904-1.196 over 9 blocks, and failed on the point figure; six runs on another host
    of the class gave 0.877-0.928. Over the limit at ci_level is a fail; reaching it is not."""
    edge = timing.Ratio("num", "den", 1.006, 0.904, 1.196, 1.049, 0.95, 1.15, 9, 0.961, True, [],
                        [1.0] * 9, [1.05] * 9)
    rec = Rec()
    with pytest.raises(Inconclusive) as e:
        lc.judge_ratio(edge, 1.0, "batch8_per_image_over_batch1_max", rec, what="per-image b8 / b1", where="m.onnx",
                       cause="c")
    msg = str(e.value)
    assert e.value.failing is False and e.value.figures["verdict"] == "inconclusive: borderline"
    assert msg.startswith("borderline: per-image b8 / b1 = 1.006 vs limit 1")
    assert "block ratios' 96% interval 0.904-1.196 over 9 blocks" in msg and "[latency] batch8_per_image_over_batch1_max" in msg
    # the same figure with the interval wholly over the limit: a planted 3% slowdown measured tightly fails
    over = timing.Ratio("num", "den", 1.03, 1.012, 1.05, 1.03, 1.01, 1.05, 9, 0.961, True, [], [1.03] * 9, [1.03] * 9)
    with pytest.raises(CheckFailure, match=r"per-image b8 / b1 = 1.030, but should be <= 1 .*interval 1.012-1.050"):
        lc.judge_ratio(over, 1.0, "batch8_per_image_over_batch1_max", Rec(), what="per-image b8 / b1", where="m.onnx",
                       cause="c")
    # within the limit on the median, however wide the interval: a pass
    within = timing.Ratio("num", "den", 0.994, 0.90, 1.19, 1.0, 0.95, 1.1, 9, 0.961, True, [], [1.0] * 9, [1.0] * 9)
    rec = Rec()
    lc.judge_ratio(within, 1.0, "batch8_per_image_over_batch1_max", rec, what="w", where="m.onnx", cause="c")
    assert rec["verdict"] == "quiet: judged on the ratio of medians"


def test_peak_is_the_best_of_its_rounds_when_the_host_slows_one(monkeypatch):
    """A VM's host can slow the guest for a second with no sign inside it (issue 15: one quiet
    round gave 140 GFLOP/s where others gave 184-199): the peak is the best round."""
    walls = iter([0.2] * 4 + [0.1] * 4 + [0.2] * 4)
    monkeypatch.setattr(timing, "timed_call", lambda fn, clocks: (lambda w: timing.Call(w, 2 * w, 0.0))(next(walls)))
    clocks = timing.Clocks(system_busy=lambda: None, sleep=lambda s: None)
    peak = timing.machine_peak(2, matrix=64, calls=4, clocks=clocks, rounds=3)
    assert peak.gflops == pytest.approx(2 * 64 ** 3 / 0.1 / 1e9)
    assert "best of 3 rounds" in peak.note


def test_a_long_call_fills_the_throughput_window_with_fewer_calls():
    """A large model's throughput window is sized by time: as many calls as fill window_s at the
    warm-up's call time (at least 3), two warm-up calls; a short call keeps every planned call."""
    plan = timing.plan_from_tolerances(2)
    for work_s, want_calls, want_warm in ((0.010, 10, plan.warmup), (4.0, timing.CONCURRENT_MIN_CALLS, 2)):
        machine = SimulatedMachine(work_s=work_s, threads=1)
        c = timing.measure_concurrent([machine.model(), machine.model()], 10, plan, items_per_call=8,
                                      clocks=machine.clocks, window_s=8.0)
        assert c.calls == want_calls and c.figures()["calls_per_instance"] == want_calls
        assert machine.calls == 2 * (want_warm + want_calls)
        assert c.items_per_s == pytest.approx(2 * want_calls * 8 / c.wall_s)
    assert timing.window_calls(10, 8.0, 1.5) == 6 and timing.window_calls(10, None, 9.0) == 10
