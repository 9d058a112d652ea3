"""The nightly ``index.html``: one self-contained file (inline CSS, plots as data: URIs, no
script). Every string that comes from a user or a test (model ids, messages, paths, figure
names and values) goes through :func:`esc`; a Content-Security-Policy that allows no script
at all is the second line of defence.
"""
from __future__ import annotations

import html
import json
from typing import Any

from .plots import data_uri
from .results import fingerprint_line
from .verdict import host_text, level, profile_text, verdict_line
from .views import COLUMNS, DASH, Cell, ModelView, Part, nodeid_digest, outcome_of, status_of


def columns() -> list[tuple[str, str, str]]:
    """The table's columns with the verdict right after the model (read first, left to right)."""
    return [c for c in COLUMNS if c[0] == "verdict"] + [c for c in COLUMNS if c[0] != "verdict"]

CSS = """
body{font:13px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em;color:#222}
h1{font-size:20px;margin:0 0 .4em} h2{font-size:16px;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
h3{font-size:14px;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.3em 0} td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}
th{background:#f1f1f1;text-align:left;font-weight:600}
table.models{max-width:1360px} table.models td{white-space:normal;overflow-wrap:anywhere}
table.models th{font-size:12px} table.models td.model{font-weight:600;white-space:nowrap}
table.models td.wrap{min-width:9em;max-width:20em}
.ok{color:#11632b} .bad{color:#b00020;font-weight:600} .warn{color:#8a5a00}
.known{color:#8a5a00;background:#fff3d6}
a.ok,a.bad,a.warn,a.known,a.n{text-decoration:none} a:hover{text-decoration:underline}
td .part{display:block}
.banner{padding:.5em .8em;margin:.5em 0;border-radius:4px;font-weight:600}
.banner.incomplete,.banner.fail{background:#fde2e1;border:2px solid #b00020;color:#b00020}
.banner.complete,.banner.pass{background:#e4f4e8;border:1px solid #11632b;color:#11632b}
.banner.known{background:#fff3d6;border:2px solid #c77d00;color:#7a4d00}
.banner.verdict{font-size:18px}
.banner .why{font-size:13px;font-weight:400;margin-top:.2em}
table.meta td:first-child{font-weight:600;background:#fafafa}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;max-width:110ch}
tr.test:target{background:#fff7c2}
.small{font-size:11px;color:#555}
img.trend{max-width:100%;border:1px solid #ddd}
details summary{cursor:pointer}
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# A file carrying this was written by us and may be re-rendered in place; any other
# index.html is the user's and is never overwritten.
GENERATOR = '<meta name="generator" content="zooconform-report">'


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def anchor(nodeid: str) -> str:
    return "t-" + nodeid_digest(nodeid)


def model_anchor(model: str) -> str:
    return "m-" + nodeid_digest("model:" + model)


def part_html(p: Part) -> str:
    cls = esc(p.status or "n")
    title = f' title="{esc(p.title)}"' if p.title else ""
    if p.nodeid:
        return f'<a class="{cls}" href="#{anchor(p.nodeid)}"{title}>{esc(p.text)}</a>'
    return f'<span class="{cls}"{title}>{esc(p.text)}</span>'


def cell_html(cell: Cell | None, rowspan: int = 1, extra_class: str = "") -> str:
    span = f' rowspan="{rowspan}"' if rowspan > 1 else ""
    cls = f' class="{extra_class}"' if extra_class else ""
    if cell is None or cell.empty:
        return f"<td{span}{cls}>{DASH}</td>"
    if len(cell.parts) == 1:
        return f"<td{span}{cls}>{part_html(cell.parts[0])}</td>"
    lines: list[list[Part]] = []
    for p in cell.parts:
        if p.inline and lines:
            lines[-1].append(p)
        else:
            lines.append([p])
    inner = "".join(f'<span class="part">{"".join(part_html(p) for p in line)}</span>' for line in lines)
    return f"<td{span}{cls}>{inner}</td>"


def family_table(views: list[ModelView], regressions: dict[str, Cell]) -> str:
    cols = columns()
    head = "<tr><th>model</th>" + "".join(f"<th>{esc(title)}</th>" for _, title, _ in cols) + "</tr>"
    body = []
    for v in views:
        n = max(1, len(v.rows))
        for i in range(n):
            row = v.rows[i] if i < len(v.rows) else None
            tds = []
            if i == 0:
                sub = f'<div class="small">{esc(v.weights)}</div>' if v.weights else ""
                tds.append(f'<td rowspan="{n}" class="model"><a href="#{model_anchor(v.model)}">{esc(v.model)}</a>{sub}</td>')
            for key, _, col_level in cols:
                if key == "regression":
                    if i == 0:
                        tds.append(cell_html(regressions.get(v.model), n, "wrap"))
                    continue
                if key == "verdict":
                    if i == 0:
                        tds.append(cell_html(v.cells.get(key), n, "wrap"))
                    continue
                if col_level == "row" and not (key in v.cells and key == "fp32"):
                    tds.append(cell_html(row.cells.get(key) if row else None))
                elif i == 0:
                    tds.append(cell_html(v.cells.get(key), n))
            body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table class="models">{head}{"".join(body)}</table>'


def meta_table(doc: dict[str, Any], run_id: str) -> str:
    machine = doc.get("machine") or {}
    settings = doc.get("settings") or {}
    versions = doc.get("versions") or {}
    rows = [
        ("run", run_id),
        ("started (UTC)", doc.get("started_utc")),
        ("wall", f"{doc.get('wall_s', DASH)} s"),
        ("tier", settings.get("tier")),
        ("models", ", ".join(map(str, settings.get("models") or []))),
        ("data", settings.get("imagenet") or "embedded images (no labels)"),
        ("weights", settings.get("weights_dir") or "seeded defaults unless a manifest names checkpoints"),
        ("artifacts", settings.get("artifacts") or DASH),
        ("budget profile", profile_text(doc)),
        ("host class", host_text(doc)),
        ("machine", f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, host {machine.get('hostname', '?')}"
                    + (f", accelerators {machine['gpu']}" if machine.get("gpu") else "")),
        ("host fingerprint", fingerprint_line(machine)),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("outcomes", ", ".join(f"{n} {k}" for k, n in sorted((doc.get("counts") or {}).items()))),
    ]
    for note in doc.get("notes") or []:
        rows.append(("latency budgets" if "budgets" in note else "note", note))
    for part in doc.get("parts") or []:
        pm = part.get("machine") or {}
        rows.append(("part", f"{part.get('label')}: {part.get('tests')} tests, {part.get('wall_s')} s, "
                              f"{'complete' if part.get('complete') else 'INCOMPLETE'}"
                              + (f" ({part.get('source')})" if part.get("source") else "")
                              + (f"; host {fingerprint_line(pm)}" if pm.get("fingerprint") else "")))
    if settings.get("manifest_error"):
        rows.append(("manifest error", settings["manifest_error"]))
    for p in (settings.get("data_problems") or [])[:10]:
        rows.append(("data problem", p))
    return '<table class="meta">' + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def banner(doc: dict[str, Any]) -> str:
    """The verdict first: red for a failing or incomplete run, amber for a pass with known
    failures (or inconclusive results), green for a clean pass."""
    lv = level(doc)
    cls = {"fail": "fail", "incomplete": "incomplete", "known": "known", "pass": "pass"}.get(lv, "known")
    why = ""
    if lv == "known":
        why = ("every selected check passed; known failures (fixtures/expectations.toml) and inconclusive "
               "results are listed in amber below")
    if not doc.get("complete"):
        reasons = "; ".join(doc.get("incomplete_reasons") or []) or "the run was interrupted before every test reported"
        why = f"INCOMPLETE: {reasons}. What ran is below; missing figures show as {DASH}."
    extra = f'<div class="why">{esc(why)}</div>' if why else ""
    return f'<div class="banner verdict {cls}">{esc(verdict_line(doc))}{extra}</div>'


def tests_table(tests: list[dict[str, Any]]) -> str:
    rows = []
    for t in tests:
        figs = t.get("figures") or {}
        fig_html = ""
        if figs:
            inner = "".join(f"<tr><td>{esc(k)}</td><td>{esc(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
                            for k, v in figs.items())
            fig_html = f"<details><summary>{len(figs)} figures</summary><table>{inner}</table></details>"
        msg = f"<pre>{esc(t.get('message'))}</pre>" if t.get("message") else ""
        outcome = outcome_of(t)
        cls = status_of(outcome) or "n"
        repro = (f'<div class="small">repro: <a href="{esc(t["repro"])}/command.txt">{esc(t["repro"])}</a></div>'
                 if t.get("repro") else "")
        rows.append(f'<tr class="test" id="{anchor(t["nodeid"])}"><td>{esc(t["nodeid"])}</td>'
                    f'<td class="{cls}">{esc(outcome)}</td><td>{esc(t.get("duration_s"))}</td>'
                    f'<td>{msg}{repro}{fig_html}</td></tr>')
    return ("<table><tr><th>test</th><th>outcome</th><th>s</th><th>message / figures</th></tr>"
            + "".join(rows) + "</table>")


OVERHEAD_GOAL = 1.3  # issue 19: the tests' time over the work under test


def phases_section(doc: dict[str, Any]) -> str:
    """Where the time went: self seconds per model and phase (results.json ``phases``,
    harness/phases.py), the work under test apart from the suite's own overhead."""
    prof = doc.get("phases") or {}
    by_model: dict[str, dict[str, float]] = prof.get("by_model") or {}
    if not by_model:
        return ""
    totals: dict[str, float] = prof.get("totals") or {}
    essential = set(prof.get("essential_phases") or [])
    cols = list(totals)  # largest first

    def head(p: str) -> str:
        kind, mark = ("work under test", "") if p in essential else ("suite overhead", " *")
        return f'<th title="{kind}">{esc(p)}{mark}</th>'

    memory: dict[str, dict[str, Any]] = prof.get("memory") or {}

    def peak(model: str) -> str:
        m = memory.get(model) or {}
        said = [f"set in {m['phase']}"] if m.get("peak_mb") is not None else []
        if m.get("phases"):
            said.append("high-water MB by phase: " + ", ".join(f"{p} {mb}" for p, mb in m["phases"].items()))
        title = f' title="{esc("; ".join(said))}"' if said else ""
        return f"<td{title}>{esc(m['peak_mb']) if m.get('peak_mb') is not None else DASH}</td>"

    rows = []
    for model, ph in sorted(by_model.items(), key=lambda kv: -sum(kv[1].values())):
        cells = "".join(f"<td>{esc(round(ph[p], 1)) if p in ph else DASH}</td>" for p in cols)
        rows.append(f"<tr><td>{esc(model)}</td>{cells}<td>{esc(round(sum(ph.values()), 1))}</td>{peak(model)}</tr>")
    highest = max((m["peak_mb"] for m in memory.values() if m.get("peak_mb") is not None), default=None)
    rows.append("<tr><td><b>all</b></td>" + "".join(f"<td><b>{esc(round(totals[p], 1))}</b></td>" for p in cols)
                + f"<td><b>{esc(prof.get('accounted_s'))}</b></td>"
                + f"<td><b>{esc(highest) if highest is not None else DASH}</b></td></tr>")
    ratio = prof.get("overhead_ratio")
    line = (f"tests {prof.get('tests_s')} s in all; work under test ({', '.join(sorted(essential))}) "
            f"{prof.get('essential_s')} s; not in any phase {prof.get('unattributed_s')} s; overhead ratio "
            f"{ratio if ratio is not None else DASH} (tests / work under test; goal \u2264 {OVERHEAD_GOAL}). "
            "* suite overhead: references, floors, diagnoses. peak MB: the highest resident memory of the "
            "test process that one of the model's phases set (what a runner must hold for it; "
            "– when it never raised its worker's peak); its title gives each phase's high-water.")
    return ('<h2 id="phases">Where the time went</h2>'
            "<table><tr><th>model</th>" + "".join(head(p) for p in cols) + "<th>total s</th><th>peak MB</th></tr>"
            + "".join(rows) + f'</table><p class="small">{esc(line)}</p>')


def render(doc: dict[str, Any], run_id: str, views: list[ModelView], orphans: list[dict[str, Any]],
           regressions: dict[str, Cell], trends: dict[str, bytes | None], links: dict[str, str],
           history_note: str = "", sensitivity: dict[str, Any] | None = None) -> str:
    """``sensitivity``: the document of fixtures/sensitivity.json (harness/report/sensitivity.py),
    or None for the one line that says how to measure it."""
    from .sensitivity import html_section

    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">', GENERATOR,
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',  # a constant: no escaping needed
           f"<title>zooconform report {esc(run_id)}</title><style>{CSS}</style></head><body>",
           f"<h1>zooconform report {esc(run_id)}</h1>", banner(doc), meta_table(doc, run_id)]
    if links:
        out.append("<p>" + " \u00b7 ".join(f'<a href="{esc(href)}">{esc(label)}</a>' for label, href in links.items())
                   + "</p>")
    families: dict[str, list[ModelView]] = {}
    for v in views:
        families.setdefault(v.family, []).append(v)
    if not views:
        out.append("<p>No model was tested in this run.</p>")
    for fam, vs in families.items():
        out.append(f'<h2 id="family-{esc(nodeid_digest(fam))}">{esc(fam)}</h2>')
        out.append(family_table(vs, regressions))
    out.append('<p class="small">Each figure links to the test that produced it; hover for the figures behind it. '
               f"{DASH}: no figure (the suite did not run for this model, or recorded none). {esc(history_note)}</p>")
    out.append(html_section(sensitivity))
    out.append(phases_section(doc))
    out.append("<h2>Models: trends and tests</h2>")
    for v in views:
        out.append(f'<h3 id="{model_anchor(v.model)}">{esc(v.model)} <span class="small">{esc(v.family)}</span></h3>')
        png = trends.get(v.model)
        if png:
            out.append(f'<img class="trend" alt="trend of {esc(v.model)}" src="{data_uri(png)}">')
        out.append(tests_table(v.tests))
    if orphans:
        out.append("<h2>Other tests</h2>")
        out.append(tests_table(orphans))
    out.append("</body></html>")
    return "\n".join(out)
