"""The report's "What a pass rules out" section (issue 20, item 5): per check family, the smallest
planted defect the suite's checks detect, read from fixtures/sensitivity.json (written by
``zooconform sensitivity``, harness/sensitivity.py); never written by hand. Without the file the
section is one line saying how to produce it. Reads JSON only: no model, artifact or runtime."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parents[2] / "fixtures" / "sensitivity.json"
TITLE = "What a pass rules out"
HINT = "no sensitivity measurement (fixtures/sensitivity.json): run `zooconform sensitivity` to measure it"


def load(path: Path | str | None = None) -> dict[str, Any] | None:
    """The sensitivity document, or None when the file is missing or unreadable."""
    p = Path(path) if path is not None else PATH
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _fmt(v: Any) -> str:
    if v is True:
        return "yes"
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def rows(doc: dict[str, Any]) -> list[dict[str, str]]:
    """One row per planted defect: family, defect, detected at, passed at, model, measured, command."""
    out = []
    for family, e in doc.items():
        if not isinstance(e, dict):
            continue
        for d in [e, *[m for m in e.get("more") or [] if isinstance(m, dict)]]:
            smallest = d.get("smallest_detected")
            unit = d.get("unit") or ""
            yes_no = unit == "yes/no"
            detected = ("detected" if smallest is True else "NOT detected") if yes_no else \
                (f"{_fmt(smallest)} {unit}" if smallest is not None else f"not detected up to the largest tried ({unit})")
            out.append({"family": str(family), "defect": str(d.get("defect", "")), "detected": detected,
                        "passed": "" if yes_no else _fmt(d.get("not_detected_below")) if d.get("not_detected_below")
                        is not None or smallest is None else "none (detected at the smallest tried)",
                        "model": str(d.get("model", "")), "measured_utc": str(d.get("measured_utc", "")),
                        "command": str(d.get("command", "")), "check": str(d.get("check", ""))})
    return out


def html_section(doc: dict[str, Any] | None) -> str:
    e = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    head = f'<h2 id="sensitivity">{e(TITLE)}</h2>'
    if not doc:
        return f'{head}<p class="small">{e(HINT)}</p>'
    body = "".join(
        f"<tr><td>{e(r['family'])}</td><td>{e(r['defect'])}</td><td>{e(r['detected'])}</td><td>{e(r['passed'])}</td>"
        f"<td>{e(r['model'])}</td><td>{e(r['measured_utc'])}</td><td><code>{e(r['command'])}</code></td></tr>"
        for r in rows(doc))
    return (f'{head}<p class="small">Each defect was planted in one smoke model and run through the suite\'s own '
            "check: it failed at the smallest detected magnitude and passed at the one beside it. A green report "
            "rules out defects of that kind and size (on a model like it), not smaller ones.</p>"
            "<table><tr><th>family</th><th>planted defect</th><th>smallest detected</th><th>passed at</th>"
            f"<th>model</th><th>measured (UTC)</th><th>command</th></tr>{body}</table>")


def _md(text: Any) -> str:
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("`", "'").replace("\r", " ").replace("\n", " ")


def markdown_section(doc: dict[str, Any] | None) -> list[str]:
    lines = [f"## {TITLE}", ""]
    if not doc:
        return lines + [_md(HINT).replace("'zooconform sensitivity'", "`zooconform sensitivity`"), ""]
    lines += ["| family | planted defect | smallest detected | passed at | model | measured (UTC) |",
              "|---|---|---|---|---|---|"]
    commands = []
    for r in rows(doc):
        lines.append(f"| {_md(r['family'])} | {_md(r['defect'])} | {_md(r['detected'])} | {_md(r['passed'])} | "
                     f"{_md(r['model'])} | {_md(r['measured_utc'])} |")
        if r["command"] and r["command"] not in commands:
            commands.append(r["command"])
    lines.append("")
    lines += [f"Measured by `{_md(c)}`." for c in commands]
    return lines + [""]
