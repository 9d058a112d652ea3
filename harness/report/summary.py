"""The one-screen summary printed after a run: the verdict first, then one line per model and
one column per suite, then every failing or inconclusive test with its whole message (wrapped,
never cut: the measured value and the budget are at the end of a message)."""
from __future__ import annotations

import textwrap
from typing import Any

from .verdict import failing_tests, settings_line, verdict_line

_SYMBOL = {"passed": ".", "failed": "F", "error": "E", "skipped": "s", "xfailed": "x",
           "xpassed": "X", "inconclusive": "I", "not applicable": "n", None: "?"}
MAX_LISTED = 30


def one_screen(doc: dict[str, Any], width: int = 100) -> list[str]:
    by_model: dict[str, dict[str, list[str]]] = {}
    suites: list[str] = []
    for t in doc["tests"]:
        model = t.get("model", "-")
        suite = t.get("suite") or t["nodeid"].split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        suite = suite.removeprefix("test_")
        if suite not in suites:
            suites.append(suite)
        by_model.setdefault(model, {}).setdefault(suite, []).append(_SYMBOL.get(t["outcome"], "?"))
    lines = [verdict_line(doc), settings_line(doc)]
    lines.append(f"{'model':<22}" + "".join(f"{s[:10]:<12}" for s in suites))
    for model, cols in by_model.items():
        lines.append(f"{model:<22}" + "".join(f"{''.join(cols.get(s, []))[:11]:<12}" for s in suites))
    lines.append(f"{doc['wall_s']} s; {'complete' if doc['complete'] else 'INCOMPLETE'}")
    prof = doc.get("phases") or {}
    if prof.get("totals"):  # where the time went (harness/phases.py), largest phases first
        top = ", ".join(f"{p} {s:.0f} s" for p, s in list(prof["totals"].items())[:5])
        ratio = prof.get("overhead_ratio")
        lines.append(f"time: {top}; overhead ratio {ratio if ratio is not None else '-'} (tests / work under test)")
    if prof.get("memory"):  # the memory a runner must hold: the highest process peak and who set it
        peaks = [(m, e) for m, e in prof["memory"].items() if e.get("peak_mb") is not None]
        if peaks:
            model, peak = max(peaks, key=lambda kv: kv[1]["peak_mb"])
            highs = ", ".join(f"{p} {mb}" for p, mb in list((peak.get("phases") or {}).items())[:4])
            lines.append(f"memory: peak {peak['peak_mb']} MB of one test process, set by {model} ({peak['phase']})"
                         + (f"; its high-water MB by phase: {highs}" if highs else ""))
    for note in doc.get("notes") or []:
        lines.append(f"  {note}")
    failing = failing_tests(doc) + [t for t in doc["tests"] if t["outcome"] == "inconclusive" and not t.get("failing")]
    for t in failing[:MAX_LISTED]:
        head = f"  {str(t['outcome'] or 'unfinished').upper()}: {t['nodeid']}"
        lines.append(head)
        msg = str(t.get("message") or "")
        for para in msg.splitlines() or [""]:
            lines += textwrap.wrap(para, width=max(40, width), initial_indent="      ", subsequent_indent="      ",
                                   break_long_words=False, break_on_hyphens=False) if para.strip() else []
        if t.get("repro"):
            lines.append(f"      repro: {t['repro']}")
    if len(failing) > MAX_LISTED:
        lines.append(f"  ... and {len(failing) - MAX_LISTED} more (see index.html / report.html)")
    return lines
