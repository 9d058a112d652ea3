"""``results.json``: every figure every check measured, with machine and library versions.

Figures travel with the test report (``user_properties``), so under xdist the controller
sees them all and writes one file. Writes are atomic (temp file + rename).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..cache import atomic_write_text  # noqa: F401  (re-exported: the report's writers use it from here)
from ..figures import TEST_FIELDS
from ..host import library_versions, machine_info  # noqa: F401  (re-exported: the run's machine and versions)
from ..phases import profile, read_events

FIGURE_PREFIX = "fig:"


def jsonable(value: Any) -> Any:
    """Figures as JSON: numpy scalars to Python, non-finite floats to strings."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    # plain types only: a subclass (zoo.Printed is a float) cannot cross to the xdist controller
    # (execnet serializes exact types) and gains nothing in JSON
    for plain in (str, int, float):
        if isinstance(value, plain):
            return plain(value)
    return str(value)


NOT_APPLICABLE = "not applicable"  # an outcome: a budget that does not hold on this host, not judged
# the host fingerprint's fields that go into results.json's machine section (cpu and cores are
# machine_info's own; the rest is harness/host.py's Fingerprint)
FINGERPRINT_KEYS = ("host_class", "isa", "arch", "u8s8_saturates", "fp32_peak_gflops", "int8_peak_gops",
                    "peak_threads", "peaks_quiet", "flags_source")


def machine_section(fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """results.json's ``machine``: machine_info's keys (hostname, platform, cpu, cores, gpu; what
    older readers and ``harness.budgets`` read) plus the host fingerprint and its one line."""
    out = machine_info()
    if fingerprint:
        out.update({k: fingerprint.get(k) for k in FINGERPRINT_KEYS})
        out["fingerprint"] = fingerprint.get("one_line") or ""
    return out


def fingerprint_line(machine: dict[str, Any]) -> str:
    """One line for headers: the fingerprint's own, or what an older results.json has."""
    if machine.get("fingerprint"):
        return str(machine["fingerprint"])
    return f"{machine.get('cpu') or '?'}, {machine.get('cores') or '?'} cores (no host fingerprint recorded)"


def run_notes(tests: list[dict[str, Any]]) -> list[str]:
    """Lines the whole run must say once: whether its absolute latency budgets applied to this
    host (each absolute latency test records the run's line as ``budgets_line``)."""
    notes: list[str] = []
    for t in tests:
        line = (t.get("figures") or {}).get("budgets_line")
        if isinstance(line, str) and line not in notes:
            notes.append(line)
    return notes


class ResultsCollector:
    """Gathers one record per test from the reports the controller sees."""

    def __init__(self, settings: dict[str, Any]):
        self.started = time.time()
        self.settings = settings
        self.tests: dict[str, dict[str, Any]] = {}
        self.fingerprint: dict[str, Any] | None = None  # set by the plugin (harness/host.py's Fingerprint)
        self.phases_path: Path | None = None  # the run's phase log (harness/phases.py), set by the plugin

    def add(self, report) -> None:
        rec = self.tests.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": None,
                                                     "duration_s": 0.0, "figures": {}})
        rec["duration_s"] = round(rec["duration_s"] + float(getattr(report, "duration", 0.0)), 4)
        for name, value in getattr(report, "user_properties", []):
            if name.startswith(FIGURE_PREFIX):
                rec["figures"][name[len(FIGURE_PREFIX):]] = jsonable(value)
            elif name in TEST_FIELDS:  # model, family, check, precision, batch, ... (harness/figures.py)
                rec[name] = value
        outcome = _outcome(report)
        if report.failed and outcome not in ("failed", "error"):
            rec["failing"] = True  # a failing inconclusive, a strict XPASS: the run is red
        # the worst phase wins: a teardown error after a pass is an error
        order = ["passed", "skipped", NOT_APPLICABLE, "xfailed", "xpassed", "inconclusive", "failed", "error"]
        if outcome and (rec["outcome"] is None or order.index(outcome) > order.index(rec["outcome"])):
            rec["outcome"] = outcome
            if outcome in ("failed", "error", "skipped", NOT_APPLICABLE, "xfailed", "inconclusive"):
                rec["message"] = _short_message(report)
                for name, value in getattr(report, "user_properties", []):
                    if name == "repro":  # the failure's repro bundle (harness/report/repro.py)
                        rec["repro"] = value

    def document(self, complete: bool, exitstatus: int | None) -> dict[str, Any]:
        from .verdict import applied_profile

        tests = list(self.tests.values())
        # the profile the run applied (auto-detected or --profile), as its latency tests recorded it
        applied = applied_profile(tests, self.settings)
        self.settings.update(profile=applied["name"], profile_how=applied["how"], profile_reason=applied["reason"])
        counts: dict[str, int] = {}
        for t in tests:
            counts[t["outcome"] or "unknown"] = counts.get(t["outcome"] or "unknown", 0) + 1
        return {
            "schema": "zooconform.results/1",
            "complete": complete,
            "exitstatus": exitstatus,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_s": round(time.time() - self.started, 2),
            "machine": jsonable(machine_section(self.fingerprint)),
            "versions": library_versions(),
            "settings": jsonable(self.settings),
            "counts": counts,
            "notes": run_notes(tests),
            "phases": self.phase_profile(tests),
            "tests": tests,
        }

    def phase_profile(self, tests: list[dict[str, Any]]) -> dict[str, Any]:
        """Seconds per model and phase, and the suite's overhead ratio (harness/phases.py)."""
        events = read_events(self.phases_path)[0] if self.phases_path is not None else []
        return profile(events, busy_s=sum(float(t.get("duration_s") or 0.0) for t in tests))

    def write(self, path: Path, complete: bool, exitstatus: int | None) -> dict[str, Any]:
        doc = self.document(complete, exitstatus)
        atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False))
        return doc


def _outcome(report) -> str | None:
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            return "xfailed" if report.skipped else "xpassed"
        # failing or not (the plugin reports a non-failing one as skipped): its own outcome
        if any(n == "inconclusive" for n, _ in getattr(report, "user_properties", [])):
            return "inconclusive"
        if report.skipped and any(n == "not_applicable" for n, _ in getattr(report, "user_properties", [])):
            return NOT_APPLICABLE
        return report.outcome
    if report.failed:
        return "error"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    return None


def _short_message(report) -> str:
    if hasattr(report, "wasxfail") and report.wasxfail:
        return str(report.wasxfail)
    for name, value in getattr(report, "user_properties", []):
        if name == "message":  # the check's own message (harness/plugin.py: a CheckFailure's one line)
            return str(value)
    lr = report.longrepr
    if lr is None:
        return ""
    if isinstance(lr, tuple) and len(lr) == 3:  # skip: (file, line, reason)
        return str(lr[2])
    crash = getattr(getattr(lr, "reprcrash", None), "message", None)
    return crash if crash else str(lr)[-2000:]
