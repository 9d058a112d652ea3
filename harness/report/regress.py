"""The regression column: what got worse than the previous run of the same model, beyond noise.

Noise per kind of metric (thresholds in ``fixtures/tolerances.toml`` [report], each with its
reasoning):

- latency: the spread the latency suite measured (CV, or IQR/1.349/median) in both runs,
  ``sigmas * sqrt(cv_prev^2 + cv_now^2)``, never below ``latency_min_rel``; compared only on
  the same kind of machine (host class, cpu, cores; the hostname only for records without a
  host class), thread count and profile.
- proportions (top-1, agreement): a two-proportion z-test on the images behind each figure
  (binomial noise of a finite eval set), compared only on the same data (embedded vs ImageNet).
- errors vs a floor (export, re-param): growth by more than ``error_growth`` and above the floor.
- outcomes: a test that passed in the previous run and fails or errors now.
"""
from __future__ import annotations

import math
from typing import Any

from .views import BAD, ModelView, Part, fmt, nodeid_digest, outcome_of, pct

DEFAULT_N = 200  # the embedded evaluation split (harness/lab.py DEFAULT_EVAL_IMAGES)


def thresholds() -> dict[str, float]:
    from ..tolerances import tolerance

    return {k: tolerance("report", k) for k in
            ("latency_min_rel", "latency_noise_sigmas", "proportion_z", "error_growth")}


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """One kind of machine for latency: the same host class (ISA flags that pick the kernels), CPU
    model and cores, not the same hostname, so ephemeral CI runners (a new name each run) are
    compared with each other; one VM name can land on hosts of another class (DESIGN.md "Hosts
    differ"), which this tells apart. Records without a host class (older history) fall back to
    the hostname."""
    ma, mb = a.get("machine") or {}, b.get("machine") or {}
    if ma.get("host_class") and mb.get("host_class"):
        keys: tuple[str, ...] = ("host_class", "cpu", "cores")
    else:
        keys = ("hostname", "cpu", "cores")
    return (all(ma.get(k) == mb.get(k) for k in keys)
            and a.get("threads") == b.get("threads") and a.get("profile") == b.get("profile"))


def find_regressions(view: ModelView, current: dict[str, Any], previous: dict[str, Any] | None,
                     limits: dict[str, float] | None = None) -> list[Part]:
    """Parts for the regression cell (empty: nothing got worse, or nothing to compare with)."""
    if previous is None:
        return []
    limits = limits or thresholds()
    out: list[Part] = []
    prev_metrics = previous.get("metrics") or {}
    machine_ok = same_machine(current, previous)
    data_ok = current.get("data") == previous.get("data")
    for name, m in sorted(view.metrics.items()):
        p = prev_metrics.get(name)
        if not isinstance(p, dict) or not isinstance(p.get("value"), (int, float)):
            continue
        prev = float(p["value"])
        if m.kind == "latency":
            if not machine_ok or prev <= 0:
                continue
            rel = m.value / prev - 1
            spread = math.hypot(m.cv or 0.0, float(p.get("cv") or 0.0))
            allowed = max(limits["latency_min_rel"], limits["latency_noise_sigmas"] * spread)
            if rel > allowed:
                out.append(Part(f"{m.label}: {fmt(prev)} \u2192 {fmt(m.value)} (+{rel:.0%}, noise {allowed:.0%})",
                                m.nodeid, "bad", f"{name}: previous run {previous.get('run_id')}"))
        elif m.kind == "proportion":
            if not data_ok:
                continue
            n_now, n_prev = m.n or DEFAULT_N, int(p.get("n") or DEFAULT_N)
            pooled = (m.value * n_now + prev * n_prev) / (n_now + n_prev)
            se = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1 / n_now + 1 / n_prev))
            drop = prev - m.value
            if drop > 0 and drop > limits["proportion_z"] * se:
                out.append(Part(f"{m.label}: {pct(prev)} \u2192 {pct(m.value)} (-{100 * drop:.1f} pt, "
                                f"noise {100 * limits['proportion_z'] * se:.1f} pt)",
                                m.nodeid, "bad", f"{name}: previous run {previous.get('run_id')}; n={n_prev}/{n_now}"))
        elif m.kind == "error":
            floor = m.floor or 0.0
            if m.value > max(prev * limits["error_growth"], floor) and m.value > prev:
                out.append(Part(f"{m.label}: {fmt(prev, 2)} \u2192 {fmt(m.value, 2)} (x{m.value / prev:.3g})"
                                if prev > 0 else f"{m.label}: 0 \u2192 {fmt(m.value, 2)}",
                                m.nodeid, "bad", f"{name}: previous run {previous.get('run_id')}"))
    passed_before = set(previous.get("passed_digests") or [])
    newly = [t for t in view.tests if outcome_of(t) in BAD and nodeid_digest(t["nodeid"]) in passed_before]
    for t in newly[:5]:
        out.append(Part(f"now {t.get('outcome') or 'error'}: {t['nodeid'].split('::')[-1]}", t["nodeid"], "bad",
                        str(t.get("message", ""))[:500]))
    if len(newly) > 5:
        out.append(Part(f"... and {len(newly) - 5} more newly failing", None, "bad"))
    return out
