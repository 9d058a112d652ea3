"""The run's verdict in one line, the first thing every report says.

``FAIL: 27 failed · 13 known failures · 0 inconclusive · 117 passed``

- ``FAIL`` (red): a check failed or errored, a strict known failure passed (XPASS), or a
  failing inconclusive (a model that cannot be judged) — the run exits 1.
- ``INCOMPLETE`` (red): the run did not finish (interrupted, killed, a crashed worker).
- ``PASS`` (green) with known failures (amber): every check passed, some failures are declared
  in ``fixtures/expectations.toml``.
- ``PASS`` (green): every selected check passed.

Also the applied latency-budget profile and the host class, with how each was chosen: the
profile a run applied is what its latency tests recorded (``profile``, ``profile_how``,
``budgets_line``), not only what ``--profile`` said (auto-detection leaves that empty).
Pure functions of a results document: no pytest, no torch.
"""
from __future__ import annotations

from typing import Any

SEP = " \u00b7 "

# (outcome, label) in the order the line reads; "always": shown even at 0
_PARTS = [("failed", "failed", True), ("error", "errors", False), ("unfinished", "unfinished", False),
          ("xpassed", "unexpectedly passing", False), ("xfailed", "known failures", True),
          ("inconclusive", "inconclusive", True), ("passed", "passed", True),
          ("not applicable", "not applicable", False), ("skipped", "skipped", False)]


def _counts(doc: dict[str, Any]) -> dict[str, int]:
    counts = dict(doc.get("counts") or {})
    if "unknown" in counts:  # a test that started and never reported (results.py counts it so)
        counts["unfinished"] = counts.get("unfinished", 0) + counts.pop("unknown")
    return counts


def failing_tests(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Tests that make the run red: failed, errored, or recorded as failing (a failing
    inconclusive, a strict XPASS)."""
    return [t for t in doc.get("tests") or [] if t.get("outcome") in ("failed", "error") or t.get("failing")]


def level(doc: dict[str, Any]) -> str:
    """``fail`` | ``incomplete`` | ``known`` (pass with known failures) | ``pass`` | ``empty``."""
    counts = _counts(doc)
    if failing_tests(doc) or counts.get("failed") or counts.get("error"):
        return "fail"
    if not doc.get("complete") or counts.get("unfinished"):
        return "incomplete"
    if not doc.get("tests"):
        return "empty"
    if counts.get("xfailed") or counts.get("inconclusive"):
        return "known"
    return "pass"


WORD = {"fail": "FAIL", "incomplete": "INCOMPLETE", "known": "PASS", "pass": "PASS", "empty": "NO TESTS"}


def counts_line(doc: dict[str, Any]) -> str:
    counts = _counts(doc)
    parts = [f"{counts.get(k, 0)} {label}" for k, label, always in _PARTS if always or counts.get(k)]
    parts += [f"{n} {k}" for k, n in sorted(counts.items()) if k not in {p[0] for p in _PARTS}]
    return SEP.join(parts)


def verdict_line(doc: dict[str, Any]) -> str:
    """``FAIL: 27 failed · 13 known failures · 0 inconclusive · 117 passed``."""
    lv = level(doc)
    word = WORD[lv]
    if lv == "fail" and not doc.get("complete"):
        word = "FAIL (INCOMPLETE)"
    return f"{word}: {counts_line(doc)}"


def applied_profile(tests: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The latency-budget profile this run applied and how it was chosen.

    ``name`` (None: no absolute budgets judged), ``how`` (``--profile`` | ``detected`` |
    ``none`` | ``not used``), ``reason`` (the run's budget line)."""
    settings = settings or {}
    for t in tests:
        figs = t.get("figures") or {}
        if "profile_how" in figs or "budgets_line" in figs:
            return {"name": figs.get("profile"), "how": figs.get("profile_how") or "detected",
                    "reason": figs.get("budgets_line") or ""}
    given = settings.get("profile_option", settings.get("profile"))
    if given:
        return {"name": given, "how": "--profile", "reason": "given; no absolute latency budget was judged in this run"}
    return {"name": None, "how": "not used", "reason": "no absolute latency budget was judged in this run"}


def profile_text(doc: dict[str, Any]) -> str:
    """``cpu-2core (detected: ...)``, or why none applied."""
    s = doc.get("settings") or {}
    name, how, reason = s.get("profile"), s.get("profile_how"), s.get("profile_reason") or ""
    if how is None:  # a document written before the applied profile was recorded
        p = applied_profile(doc.get("tests") or [], s)
        name, how, reason = p["name"], p["how"], p["reason"]
    if name:
        return f"{name} ({how}{': ' + reason if reason and how != '--profile' else ''})"
    return f"none ({how}{': ' + reason if reason else ''})"


def host_text(doc: dict[str, Any]) -> str:
    """``x86-avx512-vnni (ISA flags from /proc/cpuinfo)``."""
    m = doc.get("machine") or {}
    hc = m.get("host_class")
    if not hc:
        return "unknown (no host fingerprint recorded)"
    src = m.get("flags_source")
    return f"{hc} (ISA flags from {src})" if src else str(hc)


def settings_line(doc: dict[str, Any]) -> str:
    return f"budget profile: {profile_text(doc)}{SEP}host class: {host_text(doc)}"
