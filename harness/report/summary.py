"""The one-screen summary printed after a run: one line per model, one column per suite."""
from __future__ import annotations

from typing import Any

_SYMBOL = {"passed": ".", "failed": "F", "error": "E", "skipped": "s", "xfailed": "x",
           "xpassed": "X", "inconclusive": "I", "not applicable": "n", None: "?"}


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
    lines = [f"{'model':<22}" + "".join(f"{s[:10]:<12}" for s in suites)]
    for model, cols in by_model.items():
        lines.append(f"{model:<22}" + "".join(f"{''.join(cols.get(s, []))[:11]:<12}" for s in suites))
    counts = ", ".join(f"{n} {k}" for k, n in sorted(doc["counts"].items()))
    lines.append(f"{counts}; {doc['wall_s']} s; {'complete' if doc['complete'] else 'INCOMPLETE'}")
    for note in doc.get("notes") or []:
        lines.append(f"  {note}")
    failing = [t for t in doc["tests"] if t["outcome"] in ("failed", "error", "inconclusive")]
    for t in failing[:8]:
        lines.append(f"  {t['outcome'].upper()}: {t['nodeid']}: {str(t.get('message', ''))[:width]}")
    if len(failing) > 8:
        lines.append(f"  ... and {len(failing) - 8} more (see report.html)")
    return lines
