"""Latency suite: fast enough, on this machine and on any machine, and honest about noise.

Per model and ``--runtime``: fp32 and int8 latency at batch 1/4/8 (pytest-benchmark pedantic
mode; ``--benchmark-json`` and results.json carry every figure) against the budget profile
that applies (``--profile NAME``, detection, or none: ratios only, figures still recorded);
ratios measured interleaved in the same run (int8 / fp32, batch 8 per image / batch 1,
RepVGG deploy / training form, the manifest's ONNX / the suite's export; limits per host
class where [latency.by_host_class] sets one); throughput of
concurrent sessions at batch 8; CUDA / TensorRT when this onnxruntime has them. A
measurement the machine's load spoils is "inconclusive: contention", never a fail; a quiet
ratio over its limit whose interval still reaches it is "inconclusive: borderline"; a quiet
figure over its budget that reproduces is re-checked against the host's peaks measured again,
and is "inconclusive: host changed" where the host slowed since the run began. A CPU
profile recorded on another host class, or at peaks outside the tolerance, makes the
absolute budgets "not applicable" (figures recorded; ``--rescale-budgets`` judges them
scaled by the peak ratio).

Run it alone (``pytest suites -m latency``; ``zooconform run -j N`` runs it serially after
the parallel phase): timings beside other tests measure those tests.
"""
from __future__ import annotations

import pytest

from harness.constants import PRECISIONS
from harness.latency import budgets
from harness.latency import checks as lc
from harness.plugin import family

pytestmark = pytest.mark.latency

GPU_CASES = [(p, prec, b) for p, prec in lc.gpu_cases() for b in lc.BATCHES]


@pytest.fixture(scope="session")
def latency_profile(lab) -> budgets.Choice:
    """The profile and whether it applies to this host (host class and measured peaks; the
    peaks are the ones the roofline figures use, measured once per process)."""
    budgets.choose(lab.settings.profile, valid_models=list(lab.zoo))  # a profile typo fails before anything is measured
    host = lc.host_figures(lc.threads_for(lab), lab=lab)
    return budgets.choose(lab.settings.profile, valid_models=list(lab.zoo), host=host,
                          rescale=bool(lab.settings.extra.get("rescale_budgets")))


def _skip(reason: str) -> None:
    if reason.startswith(lc.NOT_APPLICABLE):  # its own outcome, "not applicable" (harness/plugin.py)
        pytest.skip(reason)
    pytest.skip(f"absolute budget not judged: {reason} (figures recorded)")


def _budget_ms(choice, card, precision, batch, runtime, threads) -> float | None:
    """The budget the measurement will be judged against, so that it stops as soon as the verdict
    is clear (harness/latency/timing.py Sequential); None when none applies (figures recorded)."""
    budget = lc.budget_for(choice, card, precision, batch, runtime, threads)
    return None if isinstance(budget, str) else budget.ms


def _judge_or_skip(m, choice, card, precision, batch, runtime, threads, record, subject, file, remeasure=None):
    record(**choice.figures())
    budget = lc.budget_for(choice, card, precision, batch, runtime, threads)
    if isinstance(budget, str):
        _skip(budget)
    # a reproduced quiet failure is the model's only on the host the run started on
    lc.judge_absolute(m, budget, record, subject=subject, file=file, remeasure=remeasure,
                      recheck=lc.host_rechecker(choice, precision, runtime, threads))


@pytest.mark.parametrize("batch", lc.BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_latency_within_budget(model_card, precision, batch, lab, record, benchmark, latency_profile, runtime):
    _not_applicable(lc.not_applicable(runtime, int8=precision == "int8"))
    threads = lc.threads_for(lab)
    budget_ms = _budget_ms(latency_profile, model_card, precision, batch, runtime.id, threads)
    # no budget applies (none for this case or host): figures only, from the first quiet look
    m = lc.measure_latency(model_card, lab, record, precision, batch, benchmark=benchmark, runtime=runtime,
                           budget_ms=budget_ms, record_only=budget_ms is None)

    def remeasure():  # an over-budget quiet median must reproduce (harness/latency/checks.py judge_absolute)
        return lc.measure_latency(model_card, lab, lambda **figures: None, precision, batch, runtime=runtime,
                                  budget_ms=budget_ms)

    _judge_or_skip(m, latency_profile, model_card, precision, batch, runtime.id, threads, record,
                   f"{model_card.id} {precision} batch {batch} ({runtime.id}, {threads} threads)",
                   lc.artifact(lab, model_card, precision)[0], remeasure)


@pytest.mark.latency_ratio
@pytest.mark.parametrize("batch", lc.RATIO_BATCHES, ids=lambda b: f"b{b}")
def test_int8_faster_than_fp32(model_card, batch, lab, record, runtime):
    _not_applicable(lc.not_applicable(runtime, files=True, int8=True))
    lc.check_int8_faster(model_card, lab, record, batch, runtime=runtime)


@pytest.mark.latency_ratio
def test_batch8_per_image_not_slower_than_batch1(model_card, lab, record, runtime):
    lc.check_batching_pays(model_card, lab, record, runtime=runtime)


@pytest.mark.latency_ratio
@family("repvgg")
def test_deploy_form_faster_than_training_form(model_card, lab, record, runtime):
    lc.check_deploy_faster(model_card, lab, record, runtime=runtime)


@pytest.mark.latency_ratio
def test_user_onnx_not_slower_than_own_export(model_card, lab, record, runtime):
    user = lab.artifacts(model_card).get("onnx")
    if user is None:
        pytest.skip(f"the manifest names no onnx for {model_card.id} (--artifacts): nothing to compare with the suite's export")
    _not_applicable(lc.not_applicable(runtime, files=True))
    lc.check_user_onnx_speed(model_card, lab, record, user, runtime=runtime)


def _not_applicable(reason) -> None:
    if reason:
        pytest.skip(f"{lc.NOT_APPLICABLE} {reason}")


def test_throughput_within_budget(model_card, lab, record, latency_profile, runtime):
    c = lc.measure_throughput(model_card, lab, record, runtime=runtime)
    record(**latency_profile.figures())
    floor = lc.throughput_budget_for(latency_profile, model_card, lc.threads_for(lab))
    if isinstance(floor, str):
        if floor.startswith(lc.NOT_APPLICABLE):
            pytest.skip(floor)
        pytest.skip(f"throughput budget not judged: {floor} (figures recorded)")
    min_ips, scaled = floor
    prof = latency_profile.profile
    where = f"{prof.file.name} [models.{model_card.id}.throughput_ips]" + (f" ({scaled})" if scaled else "")
    if scaled:
        record(throughput_budget_recorded_ips=prof.throughput[model_card.id], throughput_budget_scale_note=scaled)
    lc.judge_throughput(c, min_ips, record, subject=model_card.id, where=where,
                        recheck=lc.host_rechecker(latency_profile, "fp32", runtime, lc.threads_for(lab)))


@pytest.mark.parametrize("gpu_case", GPU_CASES or [None],
                         ids=lambda c: f"{c[0].replace('ExecutionProvider', '')}-{c[1]}-b{c[2]}" if c else "no-gpu-ep")
def test_gpu_latency_within_budget(model_card, gpu_case, lab, record, benchmark, latency_profile):
    if gpu_case is None:
        pytest.skip("no CUDA or TensorRT execution provider in this onnxruntime (CPU only): GPU budgets "
                    "(e.g. --profile t4-tensorrt) need onnxruntime-gpu on a GPU machine")
    gpu_runtime, precision, batch = gpu_case
    m = lc.measure_latency(model_card, lab, record, precision, batch, benchmark=benchmark, runtime=gpu_runtime,
                           budget_ms=_budget_ms(latency_profile, model_card, precision, batch, gpu_runtime, None))
    _judge_or_skip(m, latency_profile, model_card, precision, batch, gpu_runtime, None, record,
                   f"{model_card.id} {precision} batch {batch} ({gpu_runtime})",
                   lc.artifact(lab, model_card, "fp32" if precision == "fp16" else precision)[0])
