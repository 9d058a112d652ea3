"""The nightly report of one run: ``index.html`` (self-contained), ``summary.md`` and
``results.json`` in the run folder, and one history line per model.

``write_report`` works from a results document alone, so it serves ``zooconform run``
(after the run), ``zooconform report`` (re-render) and ``zooconform merge`` (shards) alike.
It renders whatever figures exist; an incomplete run is rendered and marked as such.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import html as html_mod
from .history import append_records, previous_record, read_history
from .merge import run_id_of
from .plots import trend_png
from .regress import find_regressions, thresholds
from .results import atomic_write_text, fingerprint_line, jsonable
from .views import BAD, DASH, Cell, ModelView, Part, build_views, model_record, outcome_of, short_name

# A file carrying one of these markers was written by us and may be re-rendered in place;
# any other file of the same name is the user's and is never overwritten.
HTML_MARKER = html_mod.GENERATOR
MD_MARKER = "<!-- generator: zooconform-report -->"


@dataclass
class Written:
    folder: Path
    index: Path
    summary: Path
    results: Path
    history: Path | None
    appended: int
    regressions: dict[str, list[Part]]
    history_error: str = ""  # the history could not be read or appended to (the report is written anyway)


def utc_stamp(t: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if t is None else t))


def new_run_folder(parent: Path, name: str) -> Path:
    """A folder that did not exist before (two runs in the same second get -2, -3, ...)."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        folder = parent / (name if i == 1 else f"{name}-{i}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {parent}")


def _write_ours(path: Path, text: str, marker: str) -> None:
    _refuse_foreign(path, marker)
    atomic_write_text(path, text)


def _refuse_foreign(path: Path, marker: str) -> None:
    if path.exists():
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:4000]
        except OSError:
            head = ""
        if marker not in head:
            raise InputError(path, "exists and was not written by zooconform: not overwriting it",
                             fix="pass --out to write the report elsewhere, or move the file")


def _refuse_foreign_results(path: Path) -> None:
    if not path.exists():
        return
    try:
        schema = json.loads(path.read_text(encoding="utf-8")).get("schema", "")
    except (OSError, ValueError, AttributeError):
        schema = ""
    if not str(schema).startswith("zooconform.results"):
        raise InputError(path, "exists and is not a zooconform results file: not overwriting it",
                         fix="pass --out to write the report elsewhere, or move the file")


def write_report(doc: dict[str, Any], folder: Path | str, history: Path | str | None = None,
                 append_history: bool = True, links: dict[str, str] | None = None,
                 write_results: bool = True, sensitivity: Path | str | None = None) -> Written:
    """``sensitivity``: the "What a pass rules out" document (default fixtures/sensitivity.json)."""
    from .sensitivity import load as load_sensitivity

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_id = run_id_of(doc)
    doc = dict(doc, run_id=run_id)
    views, orphans = build_views(doc)
    hist, history_error = None, ""
    if history:
        try:
            hist = read_history(history)
        except OSError as e:  # a folder, no read permission: the report is still written, without comparison
            history_error = (f"{history}: cannot be read ({e.strerror or e}); regressions were not compared "
                             f"(fix: make it a readable file, or pass --history FILE / --no-history)")
    if hist is not None and hist.bad_lines:
        assert history is not None  # hist was read from it
        doc["notes"] = list(doc.get("notes") or []) + [hist.bad_note(Path(history).name)]
    if history_error:
        doc["notes"] = list(doc.get("notes") or []) + [history_error]
    records = {v.model: model_record(v, doc, run_id) for v in views}

    limits = thresholds()
    regressions: dict[str, list[Part]] = {}
    cells: dict[str, Cell] = {}
    trends: dict[str, bytes | None] = {}
    for v in views:
        prev = previous_record(hist, v.model, run_id, doc.get("started_utc")) if hist else None
        found = find_regressions(v, records[v.model], prev, limits)
        regressions[v.model] = found
        v.regressions = found
        if found:
            cells[v.model] = Cell(found)
        elif hist is None:
            cells[v.model] = Cell()
        elif prev is None:
            cells[v.model] = Cell([Part("first run", None, "", "no earlier record of this model in the history")])
        else:
            cells[v.model] = Cell([Part("none", None, "ok", f"compared with run {prev.get('run_id')} "
                                                            f"({prev.get('started_utc')})")])
        if hist is not None:
            past = [r for r in hist.for_model(v.model) if r.get("run_id") != run_id
                    and (r.get("started_utc") or "") <= (doc.get("started_utc") or "~")]
            past.sort(key=lambda r: r.get("started_utc") or "")
            trends[v.model] = trend_png(v.model, past + [records[v.model]])

    links = dict(links or {})
    for label, name in (("results.json", "results.json"), ("summary.md", "summary.md"), ("results.csv", "results.csv"),
                        ("pytest-html report", "report.html"), ("JUnit XML", "junit.xml")):
        if label not in links and (name in ("results.json", "summary.md", "results.csv") or (folder / name).exists()):
            links[label] = name
    note = ""
    if hist is not None:
        assert history is not None  # hist was read from it
        earlier = [r for r in hist.runs() if r != run_id]
        note = (f"Regressions compare with the previous run of each model in {Path(history).name}"
                f" ({len(earlier)} other runs"
                + (f"; {hist.bad_note(Path(history).name)}" if hist.bad_lines else "") + ").")
    index, summary, results = folder / "index.html", folder / "summary.md", folder / "results.json"
    _refuse_foreign(index, HTML_MARKER)  # all checked before anything is written
    _refuse_foreign(summary, MD_MARKER)
    if write_results:
        _refuse_foreign_results(results)
    sens = load_sensitivity(sensitivity)
    page = html_mod.render(doc, run_id, views, orphans, cells, trends, links, note, sensitivity=sens)
    _write_ours(index, page, HTML_MARKER)
    _write_ours(summary, markdown(doc, run_id, views, orphans, cells, sensitivity=sens), MD_MARKER)
    if write_results:
        atomic_write_text(results, json.dumps(jsonable(doc), indent=1))
    atomic_write_text(folder / "results.csv", results_csv(doc, views, records))
    appended = 0
    if history and append_history and records and not history_error:
        try:
            appended = append_records(history, records.values())
        except (OSError, TimeoutError) as e:  # read-only file or folder, a lock that never came
            history_error = (f"{history}: this run's {len(records)} line(s) could not be appended "
                             f"({getattr(e, 'strerror', None) or e}); the run's report is complete in {folder} "
                             f"(fix: make the history writable and append it with `zooconform report {folder} "
                             f"--append-history`, or pass --history FILE / --no-history)")
    return Written(folder, index, summary, results, Path(history) if history else None, appended, regressions,
                   history_error)


# --- results.csv ------------------------------------------------------------------------------

CSV_FIXED = ("model", "family", "verdict", "run_verdict", "passed", "failed", "error", "xfailed", "xpassed",
             "inconclusive", "not applicable", "skipped", "unfinished", "host_class", "profile", "threads", "data",
             "run_id", "started_utc")


def results_csv(doc: dict[str, Any], views: list[ModelView], records: dict[str, dict[str, Any]]) -> str:
    """One flat row per model (like timm's ``--results-file``): the verdict, the outcome counts,
    the run's host class and profile, then one column per metric the report follows (latency
    ms, agreement, errors vs floor; ``harness/report/views.py``), empty where a model has none."""
    import csv
    import io

    from .verdict import verdict_line

    metric_names = sorted({k for r in records.values() for k in (r.get("metrics") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(CSV_FIXED) + metric_names)
    run_verdict = verdict_line(doc).split(":", 1)[0]
    for v in views:
        r = records.get(v.model) or {}
        fixed = {"model": v.model, "family": v.family, "verdict": v.verdict, "run_verdict": run_verdict,
                 **{k: v.counts.get(k, 0) for k in CSV_FIXED[4:13]},
                 "host_class": (r.get("machine") or {}).get("host_class") or "", "profile": r.get("profile") or "",
                 "threads": r.get("threads") or "", "data": r.get("data") or "", "run_id": r.get("run_id") or "",
                 "started_utc": r.get("started_utc") or ""}
        metrics = r.get("metrics") or {}
        w.writerow([fixed[k] for k in CSV_FIXED] + [(metrics.get(m) or {}).get("value", "") for m in metric_names])
    return buf.getvalue()


# --- summary.md -------------------------------------------------------------------------------

def _md(text: Any) -> str:
    """A table cell: no pipes or newlines, no raw HTML (markdown renderers pass HTML through)."""
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cell_md(cell: Cell | None) -> str:
    if cell is None or cell.empty:
        return DASH
    return _md("; ".join(cell.lines()))


def markdown(doc: dict[str, Any], run_id: str, views: list[ModelView], orphans: list[dict[str, Any]],
             regressions: dict[str, Cell], sensitivity: dict[str, Any] | None = None) -> str:
    from .html import columns
    from .sensitivity import markdown_section
    from .verdict import host_text, profile_text, verdict_line
    from .verdict import level as run_level

    word, _, rest = verdict_line(doc).partition(": ")
    mark = {"fail": "\u274c", "incomplete": "\u274c", "known": "\U0001F7E1", "pass": "\u2705"}.get(run_level(doc), "")
    lines = [MD_MARKER, f"# {mark} **{_md(word)}**: {_md(rest)}", "", f"zooconform report {_md(run_id)}", ""]
    if run_level(doc) == "known":
        lines.append("Every selected check passed; known failures (fixtures/expectations.toml) and inconclusive "
                     "results are listed below.")
    if not doc.get("complete"):
        why = "; ".join(doc.get("incomplete_reasons") or []) or "interrupted before every test reported"
        lines.append(f"**INCOMPLETE**: {_md(why)}.")
    settings = doc.get("settings") or {}
    machine = doc.get("machine") or {}
    counts = ", ".join(f"{n} {k}" for k, n in sorted((doc.get("counts") or {}).items()))
    lines += ["", f"- started {_md(doc.get('started_utc'))} UTC, wall {_md(doc.get('wall_s'))} s, tier "
                  f"{_md(settings.get('tier'))}, data {_md(settings.get('imagenet') or 'embedded')}",
              f"- budget profile: {_md(profile_text(doc))}",
              f"- host class: {_md(host_text(doc))}; machine: {_md(machine.get('cpu'))}, "
              f"{_md(machine.get('cores'))} cores",
              f"- host fingerprint: {_md(fingerprint_line(machine))}",
              *[f"- {_md(note)}" for note in doc.get("notes") or []],
              f"- outcomes: {_md(counts)}", "- full report: [index.html](index.html)", ""]
    families: dict[str, list[ModelView]] = {}
    for v in views:
        families.setdefault(v.family, []).append(v)
    cols_spec = columns()
    header = ["model"] + [title for _, title, _ in cols_spec]
    for fam, vs in families.items():
        lines += [f"## {_md(fam)}", "", "| " + " | ".join(_md(h) for h in header) + " |",
                  "|" + "---|" * len(header)]
        for v in vs:
            for i in range(max(1, len(v.rows))):
                row = v.rows[i] if i < len(v.rows) else None
                cols = [f"[{_md(v.model)}](index.html#{html_mod.model_anchor(v.model)})" if i == 0 else ""]
                for key, _, level in cols_spec:
                    if key == "regression":
                        cols.append(_cell_md(regressions.get(v.model)) if i == 0 else "")
                    elif level == "row" and not (key == "fp32" and key in v.cells):
                        cols.append(_cell_md(row.cells.get(key) if row else None))
                    else:
                        cols.append(_cell_md(v.cells.get(key)) if i == 0 else "")
                lines.append("| " + " | ".join(cols) + " |")
        lines.append("")
    lines += markdown_section(sensitivity)
    failing = [t for v in views for t in v.tests if outcome_of(t) in BAD | {"inconclusive"}]
    failing += [t for t in orphans if outcome_of(t) in BAD]
    if failing:
        lines += ["## Failing and inconclusive", ""]
        for t in failing[:60]:
            lines.append(f"- **{_md(t.get('outcome') or 'error')}** {_md(short_name(t['nodeid']))}: "
                         f"{_md(str(t.get('message', ''))[:1000])}"
                         + (f" ([repro]({_md(t['repro'])}/command.txt))" if t.get("repro") else ""))
        if len(failing) > 60:
            lines.append(f"- ... and {len(failing) - 60} more (index.html)")
        lines.append("")
    return "\n".join(lines)


def default_history(report_dir: Path | str) -> Path:
    return Path(report_dir) / "history.jsonl"

