"""The sequential stopping rule of the latency measurements (harness/latency/timing.py
Sequential, measure_interleaved), on simulated clocks: nothing here times anything real.

A measurement stops as soon as the budget lies outside the median's interval (decided), or the
interval is tight, else at the plan's maximum, judged as before. What must hold: a clear case
stops at the first look with the right verdict; a planted slowdown fails early naming budget
and median; a case at the budget runs to the maximum; a contended batch never stops a
measurement; and over many seeds an early verdict disagrees with the full-sample verdict no
more often than the nominal level allows.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from _latency_sim import SimulatedMachine

from harness import figures as figure_contract
from harness.compare import CheckFailure, Inconclusive
from harness.latency import checks as lc
from harness.latency import timing
from harness.latency.budgets import Budget
from harness.testing import Recorder

PLAN = timing.plan_from_tolerances(2)
FULL = replace(PLAN, stop_min_calls=PLAN.rounds)  # no look before the maximum: today's fixed count
NOMINAL = 1 - PLAN.stop_level  # the error rate the looks together may reach


def budget(ms: float) -> Budget:
    return Budget("cpu-test", "repvgg_a0", "fp32", 1, ms, Path("fixtures/budgets/cpu-test.toml"), False)


def measure(machine: SimulatedMachine, scale: float = 1.0, budget_ms: float | None = None,
            plan: timing.Plan = PLAN) -> timing.Measurement:
    return timing.measure(machine.model(scale), plan, clocks=machine.clocks, name="sim",
                          target_s=None if budget_ms is None else budget_ms / 1e3)


# --- the schedule and its level -------------------------------------------------------------

def test_the_first_look_is_the_first_sample_count_with_an_interval_at_the_bonferroni_level():
    calls = timing.look_schedule(PLAN.stop_min_calls, PLAN.stop_look_every, PLAN.rounds)
    level = timing.look_level(PLAN.stop_level, len(calls))
    assert calls[-1] == PLAN.rounds and level == pytest.approx(1 - NOMINAL / len(calls))
    first = calls[0]
    assert timing.median_interval(list(range(first)), level)[2] >= level
    assert timing.median_interval(list(range(first - 1)), level)[2] < level  # one fewer: no interval
    blocks = timing.look_schedule(PLAN.stop_min_blocks, PLAN.stop_look_every_blocks, PLAN.blocks)
    b_level = timing.look_level(PLAN.stop_level, len(blocks))
    assert blocks[-1] == PLAN.blocks and timing.median_interval(list(range(blocks[0])), b_level)[2] >= b_level
    # what the max costs is today's: 36 calls per configuration of an interleaved comparison
    assert PLAN.blocks * (1 + PLAN.per_block) == 6 * (1 + 5)


def test_too_few_values_decide_nothing():
    assert timing.judge_look([0.01] * 5, 1.0, 0.9875, 0.05)[0] is None


# --- absolute budgets -----------------------------------------------------------------------

def test_a_clearly_fast_model_stops_after_the_first_look_and_passes():
    m = measure(SimulatedMachine(work_s=0.010, noise=0.03, seed=1), budget_ms=20.0)
    assert m.quiet and m.stop.reason == "decided" and m.stop.looks == 1
    assert m.stop.samples == PLAN.stop_min_calls and len(m.attempt.calls) == PLAN.stop_min_calls
    assert m.stop.high < 0.020  # the whole interval under the budget
    rec = Recorder()
    lc.judge_absolute(m, budget(20.0), rec, subject="repvgg_a0 fp32 batch 1")
    assert rec["verdict"] == "quiet: judged on the median"
    f = m.figures()
    assert (f["samples_used"], f["samples_max"], f["looks"], f["stop_reason"]) == (8, 20, 1, "decided")
    assert f["look_level"] == pytest.approx(0.9875) and f["stop_interval_ms"][1] < 20.0 and f["calls_total"] == 8


def test_a_planted_slowdown_stops_early_and_fails_naming_budget_and_median():
    """The defect: the model made 30% slower; the budget holds the unslowed model with 10% headroom."""
    ok = measure(SimulatedMachine(work_s=0.010, noise=0.03, seed=2), budget_ms=11.0)
    lc.judge_absolute(ok, budget(11.0), Recorder(), subject="repvgg_a0 fp32 batch 1")  # the control passes
    slow = measure(SimulatedMachine(work_s=0.010, noise=0.03, seed=2), scale=1.3, budget_ms=11.0)
    assert slow.stop.reason == "decided" and slow.stop.samples < PLAN.rounds and slow.stop.low > 0.011
    rec = Recorder()
    with pytest.raises(CheckFailure) as e:
        lc.judge_absolute(slow, budget(11.0), rec, subject="repvgg_a0 fp32 batch 1", file="model.onnx")
    msg = str(e.value)
    median = slow.median_s * 1e3
    assert f"median latency of repvgg_a0 fp32 batch 1 = {median:.3f} ms, but should be <= 11 ms" in msg
    assert "cpu-test.toml [models.repvgg_a0.fp32.b1]" in msg and "over the budget on a quiet machine" in msg
    assert f"stopped after {slow.stop.samples} of {PLAN.rounds} calls: the budget lies outside" in msg


def test_a_model_at_the_budget_runs_to_the_maximum_and_is_judged_as_before():
    machine = SimulatedMachine(work_s=0.010, noise=0.06, seed=3)
    m = measure(machine, budget_ms=10.0)  # the simulated median is exactly the budget
    assert m.stop.reason == "max" and m.stop.samples == PLAN.rounds and m.stop.looks == 4
    full = measure(SimulatedMachine(work_s=0.010, noise=0.06, seed=3), budget_ms=10.0, plan=FULL)
    assert [c.wall_s for c in m.attempt.calls] == [c.wall_s for c in full.attempt.calls]
    outcomes = []
    for x in (m, full):
        try:
            lc.judge_absolute(x, budget(10.0), Recorder(), subject="s")
            outcomes.append("pass")
        except CheckFailure:
            outcomes.append("fail")
    assert outcomes[0] == outcomes[1]


def test_without_a_budget_only_a_tight_interval_stops_early():
    tight = measure(SimulatedMachine(work_s=0.010, noise=0.01, seed=4))
    assert tight.stop.reason == "tight" and tight.stop.samples < PLAN.rounds
    assert (tight.stop.high - tight.stop.low) / tight.median_s <= PLAN.stop_precision
    wide = measure(SimulatedMachine(work_s=0.010, noise=0.06, seed=4))
    assert wide.stop.reason == "max"


# --- contention -----------------------------------------------------------------------------

def clean(ms: float) -> timing.Call:
    return timing.Call(ms / 1e3, 2 * ms / 1e3, 0.0)


def contended(ms: float) -> timing.Call:
    return timing.Call(ms / 1e3, ms / 1e3, ms / 1e3)  # waited for a CPU half the call x 2 threads


def test_a_contended_batch_does_not_stop_a_measurement():
    """Look 2 (12 calls) would decide on its 11 clean calls (interval 10-10 ms, budget 20 ms), but a
    call since look 1 was contended: only look 3, after a clean batch, may stop."""
    calls = [clean(10)] * 7 + [clean(30)]  # look 1: the interval 10-30 ms holds the budget: undecided
    calls += [clean(10), contended(10), clean(10), clean(10)]  # look 2: a contended call in the batch
    calls += [clean(10)] * 4  # look 3: clean

    def run(batch_gate: bool) -> timing.Stop:
        seq = timing.Sequential(PLAN, 0.020)
        for c in calls:
            if not batch_gate and c.delay_s:
                c = clean(10)  # the control: the same calls, none contended
            if seq.add(c):
                break
        return seq.stop()

    control = run(batch_gate=False)
    assert control.reason == "decided" and control.samples == 12
    stop = run(batch_gate=True)
    assert stop.reason == "decided" and stop.samples == 16 and stop.skipped == 1 and stop.looks == 3


def test_a_contended_attempt_runs_to_the_maximum_and_the_quiet_retry_stops_early():
    first = PLAN.warmup + PLAN.rounds  # the first attempt's calls run on a busy machine, then it is quiet
    machine = SimulatedMachine(work_s=0.010, phases=[(first, 0.5, 0.0), (10 ** 9, 0.0, 0.0)])
    m = measure(machine, budget_ms=40.0)  # even the inflated 20 ms is far inside the budget
    busy, quiet = m.attempts
    assert busy.stop.reason == "max" and len(busy.calls) == PLAN.rounds and busy.stop.skipped == 3
    assert quiet.stop.reason == "decided" and len(quiet.calls) == PLAN.stop_min_calls and m.chosen == 1
    assert m.figures()["calls_total"] == PLAN.rounds + PLAN.stop_min_calls


# --- ratios ---------------------------------------------------------------------------------

def interleaved(machine: SimulatedMachine, num: float, limit: float | None, plan: timing.Plan = PLAN):
    target = timing.RatioTarget("num", "den", limit) if limit is not None else None
    run = timing.measure_interleaved({"num": machine.model(num), "den": machine.model(1.0)}, plan,
                                     clocks=machine.clocks, target=target)
    return run, run.ratio("num", "den")


def test_a_clearly_faster_ratio_stops_at_the_first_look_and_passes():
    run, r = interleaved(SimulatedMachine(noise=0.03, seed=5), 0.5, 1.0)
    assert run.stop.reason == "decided" and run.stop.samples == PLAN.stop_min_blocks < PLAN.blocks
    assert r.blocks == PLAN.stop_min_blocks and r.wall_high < 1.0
    rec = Recorder()
    lc.judge_ratio(r, 1.0, "int8_over_fp32_max", rec, what="w", where="a vs b", cause="c")
    assert rec["verdict"] == "quiet: judged on the ratio of medians"


def test_a_planted_slower_file_fails_the_ratio_early_naming_the_limit():
    run, r = interleaved(SimulatedMachine(noise=0.03, seed=6), 1.5, 1.2)
    assert run.stop.reason == "decided" and run.stop.samples < PLAN.blocks and run.stop.low > 1.2
    with pytest.raises(CheckFailure) as e:
        lc.judge_ratio(r, 1.2, "user_over_own_max", Recorder(), what="latency of x / own export",
                       where="x.onnx vs own.onnx", cause=f"planted 1.5x; {run.stop.line('blocks')}")
    msg = str(e.value)
    assert f"latency of x / own export = {r.wall:.3f}, but should be <= 1.2" in msg
    assert "[latency] user_over_own_max" in msg and f"stopped after {PLAN.stop_min_blocks} of {PLAN.blocks} blocks" in msg


def test_a_ratio_at_its_limit_runs_every_block():
    run, _ = interleaved(SimulatedMachine(noise=0.06, seed=7), 1.0, 1.0)
    assert run.stop.reason == "max" and run.stop.samples == PLAN.blocks


def test_contended_blocks_do_not_stop_a_ratio():
    # contended from the start to past the first look, then quiet: no stop before the block after it
    warm = 2 * PLAN.warmup
    per_block = 2 * (1 + PLAN.per_block)  # both sides
    machine = SimulatedMachine(noise=0.0, phases=[(warm + per_block * PLAN.stop_min_blocks, 0.5, 0.0),
                                                  (10 ** 9, 0.0, 0.0)])
    run, _ = interleaved(machine, 0.5, 1.0, replace(PLAN, max_attempts=1))
    assert run.stop.reason == "max" and run.stop.skipped >= 1


def test_compare_files_passes_the_limit_to_the_sequential_rule(monkeypatch):
    seen = {}

    def fake(sides, inputs, threads, *, clocks, plan, runtime, target):
        seen["target"] = target
        machine = SimulatedMachine(noise=0.02, seed=8)
        return timing.measure_interleaved({"num": machine.model(0.5), "den": machine.model(1.0)}, PLAN,
                                          clocks=machine.clocks, target=target)

    monkeypatch.setattr(lc, "interleave", fake)
    monkeypatch.setattr(lc, "onnx_work", lambda path, lab=None: (None, 0))
    rec = Recorder()
    a, b = lc.Side(Path("a.onnx"), 8, "a at batch 8"), lc.Side(Path("b.onnx"), 1, "b at batch 1")
    lc.compare_files(a, b, {}, 2, rec, limit_key="int8_over_fp32_max", what="w", cause=lambda r: "c",
                     host_class="x86-avx512-vnni")
    assert seen["target"] == timing.RatioTarget("num", "den", 1.0, 8, 1, 0.3)  # [latency] contended_ratio_margin
    assert rec["stop_reason"] == "decided" and rec["samples_used"] == PLAN.stop_min_blocks
    assert rec["samples_max"] == PLAN.blocks and rec["blocks_total"] == PLAN.stop_min_blocks



def test_a_re_measured_comparison_records_why_each_discarded_attempt_was_noisy(monkeypatch):
    """A comparison's cost is mostly its attempts (a smoke run spent 52 s on 3 attempts of one
    ratio): the figures say why each one before the kept attempt was thrown away."""
    first_attempt = 2 * PLAN.warmup + 2 * (1 + PLAN.per_block) * PLAN.blocks  # every call of it, both sides
    machine = SimulatedMachine(noise=0.0, phases=[(first_attempt, 0.5, 0.0), (10 ** 9, 0.0, 0.0)])
    run, _ = interleaved(machine, 0.5, 1.0)
    monkeypatch.setattr(lc, "onnx_work", lambda path, lab=None: (None, 0))
    sides = {"num": lc.Side(Path("a.onnx"), 1, "a"), "den": lc.Side(Path("b.onnx"), 1, "b")}
    figures = lc.side_figures(run, sides, None)
    figure_contract.validate(figures, strict=True)  # every name declared (harness/figures.py)
    assert figures["attempts"] == 2 and run.quiet
    assert len(figures["attempt_noise"]) == 1 and "calls clean" in figures["attempt_noise"][0]
    once, _ = interleaved(SimulatedMachine(noise=0.03, seed=5), 0.5, 1.0)
    assert lc.side_figures(once, sides, None)["attempt_noise"] is None


@pytest.mark.parametrize("num, re_measured", [(0.5, False), (0.9, True)])
def test_a_contended_ratio_far_within_its_limit_is_not_re_measured(num, re_measured):
    """Contention inflates one side of a ratio by at most the measured contended_ratio_margin
    (x1.3), so a contended int8 / fp32 at 0.5 of its limit cannot be a quiet fail: re-measuring
    it (up to 3 attempts of 9 blocks, 52 s for resnest50 at batch 8) changed no verdict. At 0.9
    it could be: that one is re-measured as before."""
    first_attempt = 2 * PLAN.warmup + 2 * (1 + PLAN.per_block) * PLAN.blocks
    machine = SimulatedMachine(noise=0.0, phases=[(first_attempt, 0.5, 0.0), (10 ** 9, 0.0, 0.0)])
    target = timing.RatioTarget("num", "den", 1.0, contention_margin=0.3)
    run = timing.measure_interleaved({"num": machine.model(num), "den": machine.model(1.0)}, PLAN,
                                     clocks=machine.clocks, target=target)
    r = run.ratio("num", "den")
    if re_measured:
        assert run.attempts == 2 and run.quiet and run.remeasure is None
        return
    assert run.attempts == 1 and not run.quiet and "not re-measured: contended, but within the limit / 1.3" in run.remeasure
    rec = Recorder()
    lc.judge_ratio(r, 1.0, "int8_over_fp32_max", rec, what="w", where="a vs b", cause="c", note=run.remeasure)
    assert rec["verdict"] == "contended, within the limit over the block ratios' interval and in CPU time"

# --- the error rate over seeds --------------------------------------------------------------

def test_at_the_budget_an_early_decision_is_rarer_than_the_nominal_level():
    """The true median *is* the budget: every 'decided' stop is an interval that missed it, the
    error optional stopping risks. Bonferroni keeps it at or below 1 - stop_level."""
    seeds = 400
    decided = sum(measure(SimulatedMachine(work_s=0.010, noise=0.04, seed=s), budget_ms=10.0).stop.reason == "decided"
                  for s in range(seeds))
    assert decided / seeds <= NOMINAL, f"{decided} of {seeds} decided at the budget"


@pytest.mark.parametrize("factor", [0.9, 0.95, 0.98, 1.02, 1.05, 1.1])
def test_early_verdicts_agree_with_the_full_sample_verdicts(factor):
    """Same seed, same calls: the verdict of the early stop against the verdict of all 20 calls."""
    seeds, disagree, early = 100, 0, 0
    for s in range(seeds):
        m = measure(SimulatedMachine(work_s=0.010, noise=0.04, seed=s), factor, budget_ms=10.0)
        full = measure(SimulatedMachine(work_s=0.010, noise=0.04, seed=s), factor, budget_ms=10.0, plan=FULL)
        assert len(m.attempts) == len(full.attempts) == 1
        if m.stop.reason == "max":
            assert m.median_s == full.median_s  # the same calls: the same verdict
            continue
        early += 1
        disagree += (m.median_s <= 0.010) != (full.median_s <= 0.010)
    assert disagree / seeds <= NOMINAL, f"{disagree} of {seeds} early verdicts reversed by the full sample"
    if factor in (0.9, 1.1):
        assert early == seeds  # a 10% margin is clear at sigma 4%: every seed stops early


def test_one_extreme_block_does_not_save_a_contended_slow_ratio():
    """Measured under load 12 (tiny models, the planted file with 3.7x the work): one of 9 block
    ratios fell under limit x 1.3 and the contended ratio went inconclusive. The contended rule
    reads the block ratios' 95% interval: with 9 blocks one extreme block on each side drops out,
    with 6 (today's count before issue 19) the interval is every block, as it was."""
    def run(blocks: int) -> timing.Ratio:
        busy = lambda ms: timing.Call(ms / 1e3, ms / 1e3, ms / 1e3)  # noqa: E731  (contended calls)
        num = [[busy(30.0)] * 3 for _ in range(blocks)]
        num[2] = [busy(14.0)] * 3  # the extreme block: 1.4 < 1.2 x 1.3
        den = [[busy(10.0)] * 3 for _ in range(blocks)]
        plan = replace(PLAN, blocks=blocks, judge_neighbours=False)
        return timing.Interleaved(plan, ["num", "den"], {"num": num, "den": den}, 0.9).ratio("num", "den")

    r9 = run(9)
    assert not r9.quiet and r9.coverage >= PLAN.ci_level and r9.wall_low == pytest.approx(3.0)
    with pytest.raises(CheckFailure, match=r"the 96% interval of the 9 block ratios \(3.000-3.000\)"):
        lc.judge_ratio(r9, 1.2, "user_over_own_max", Recorder(), what="w", where="a vs b", cause="3x work")
    r6 = run(6)
    assert r6.wall_low == pytest.approx(1.4)  # 6 blocks: the full range, as before
    with pytest.raises(Inconclusive):
        lc.judge_ratio(r6, 1.2, "user_over_own_max", Recorder(), what="w", where="a vs b", cause="3x work")



def test_a_measurement_nothing_will_judge_stops_at_its_first_quiet_look():
    # no budget applies (another host's profile): the figures are all it is for, 8 calls, not 20
    machine = dict(work_s=0.010, noise=0.03, seed=4)  # too wide to be tight
    sim = SimulatedMachine(**machine)
    m = timing.measure(sim.model(), PLAN, clocks=sim.clocks, name="sim", record_only=True)
    first_look = timing.look_schedule(PLAN.stop_min_calls, PLAN.stop_look_every, PLAN.rounds)[0]
    assert m.stop.reason == "recorded" and m.stop.samples == first_look < PLAN.rounds
    assert "no budget to judge" in m.stop.line()
    assert measure(SimulatedMachine(**machine)).stop.reason == "max"  # the same machine, judged: all calls
    contended = SimulatedMachine(work_s=0.010, noise=0.01, seed=4, neighbours=2.0)
    busy = timing.measure(contended.model(), PLAN, clocks=contended.clocks, name="sim", record_only=True)
    assert busy.stop.reason != "recorded"  # a contended look never stops it


# --- long calls: fewer calls, same verdicts -------------------------------------------------

LONG_S = PLAN.long_call_s * 3  # a large model's call (resnest269 fp32 batch 8: ~9 s); x0.5 still long


@pytest.mark.parametrize("num, verdict", [(0.5, "pass"), (1.3, "fail")])
def test_long_calls_on_every_side_are_single_call_blocks_with_the_same_verdict(num, verdict):
    """Both sides' calls take a second or more: two warm-up calls each, blocks of one recorded
    call and no unrecorded one, and a planted 1.3x slowdown still fails early, naming the ratio."""
    machine = SimulatedMachine(work_s=LONG_S, noise=0.03, seed=5)
    run, r = interleaved(machine, num, 1.0)
    assert run.block_calls == (0, 1) and all(len(b) == 1 for b in run.blocks["num"] + run.blocks["den"])
    assert machine.calls == 2 * timing.LONG_CALL_WARMUP + 2 * run.stop.samples
    assert run.stop.reason == "decided" and run.stop.samples == PLAN.stop_min_blocks
    rec = Recorder()
    if verdict == "pass":
        lc.judge_ratio(r, 1.0, "int8_over_fp32_max", rec, what="int8 / fp32", where="a vs b", cause="c")
        return
    with pytest.raises(CheckFailure) as e:
        lc.judge_ratio(r, 1.0, "int8_over_fp32_max", rec, what="int8 / fp32", where="a vs b", cause="not fused")
    assert "int8 / fp32" in str(e.value) and "not fused" in str(e.value) and f"{r.wall:.3f}" in str(e.value)


def test_one_short_side_keeps_the_full_blocks(monkeypatch):
    """A long side against a short one keeps one unrecorded and per_block recorded calls a block:
    measured on resnest50, the short side ran 5-7% faster after one long call than after four."""
    machine = SimulatedMachine(work_s=LONG_S, noise=0.03, seed=5)
    run = timing.measure_interleaved({"num": machine.model(1.0), "den": machine.model(0.05)}, PLAN,
                                     clocks=machine.clocks, target=timing.RatioTarget("num", "den", 1.0, 8, 1))
    assert run.block_calls == (1, PLAN.per_block)
    assert all(len(b) == PLAN.per_block for b in run.blocks["num"] + run.blocks["den"])
    monkeypatch.setattr(lc, "onnx_work", lambda path, lab=None: (None, 0))
    sides = {"num": lc.Side(Path("a.onnx"), 8, "a"), "den": lc.Side(Path("b.onnx"), 1, "b")}
    figures = lc.side_figures(run, sides, None)
    figure_contract.validate(figures, strict=True)
    assert figures["block_calls"] == [1, PLAN.per_block]


def test_a_long_absolute_call_is_warmed_up_twice_and_short_ones_as_planned():
    for work_s, warm in ((LONG_S, timing.LONG_CALL_WARMUP), (0.01, PLAN.warmup)):
        machine = SimulatedMachine(work_s=work_s, noise=0.0)
        m = measure(machine, budget_ms=work_s * 2e3)
        assert machine.calls == warm + len(m.attempt.calls), work_s


def test_a_pedantic_first_attempt_warms_a_long_call_up_twice():
    """pytest-benchmark's pedantic mode calls warmup + rounds times; for a long call the calls the
    skipped warm-ups leave over are recorded (up to the sequential rule's stop) or no-ops."""
    machine = SimulatedMachine(work_s=LONG_S, noise=0.0)
    made = []

    def pedantic(fn, warmup, rounds):
        for _ in range(warmup + rounds):
            before = machine.calls
            fn()
            made.append(machine.calls - before)

    m = timing.measure(machine.model(), PLAN, clocks=machine.clocks, first_runner=pedantic, target_s=LONG_S * 2)
    assert len(m.attempt.calls) == PLAN.stop_min_calls  # decided at the first look
    assert machine.calls == timing.LONG_CALL_WARMUP + PLAN.stop_min_calls and sum(made) == machine.calls


def test_a_long_noisy_attempt_is_not_re_measured_and_says_why():
    """An attempt of remeasure_max_s or more is kept as it is: it outlasted a burst. A short one
    is re-measured as before (the smoke tier's noisy ratios settle that way)."""
    for work_s, attempts in ((0.01, PLAN.max_attempts), (PLAN.remeasure_max_s / 20, 1)):
        machine = SimulatedMachine(work_s=work_s, busy=0.5)  # contended all along: every attempt noisy
        run = timing.measure_interleaved({"num": machine.model(1.0), "den": machine.model(1.0)}, PLAN,
                                         clocks=machine.clocks)
        assert run.attempts == attempts and not run.quiet, work_s
        if attempts == 1:
            assert run.remeasure.startswith("not re-measured: the attempt took") and "remeasure_max_s" in run.remeasure
        m = measure(SimulatedMachine(work_s=work_s, busy=0.5))
        assert len(m.attempts) == attempts, work_s
