"""From ``results.json`` to one view per model: the cells of the nightly table and the
metrics that go to history.

Columns read figures only through the figure-name contract (``harness/figures.py``): each
figure declares the role it feeds (``error``, ``agreement``, ``latency_ms``, ...) and its unit,
and a column asks for a role. A test's model, family, check, row, precision, batch and runtime
are structured fields of its record (written when it was collected), never parsed from its
node id. A column falls back to the suite's outcomes when no figure feeds it, so the report
renders whatever exists. Every cell remembers the test that produced it, so the page can
link to it. Older results.json files are read through :func:`harness.figures.canonical`.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import figures as contract
from ..constants import PRECISIONS

DASH = "\u2014"

# worst last: a model's verdict is its worst test
# "unfinished": the test started but never reported its call (the run was interrupted in it)
UNFINISHED = "unfinished"
# "not applicable": a budget recorded on another host class (or at other peaks): not judged
NOT_APPLICABLE = "not applicable"
OUTCOME_ORDER = ["skipped", NOT_APPLICABLE, "passed", "xfailed", "xpassed", "inconclusive", UNFINISHED, "failed", "error"]
BAD = {"failed", "error"}


def outcome_of(test: dict[str, Any]) -> str:
    return test.get("outcome") or UNFINISHED


DISPLAY_ORDER = ["passed", "failed", "error", "inconclusive", UNFINISHED, "xfailed", "xpassed", NOT_APPLICABLE, "skipped"]


def counts_text(counts: dict[str, int]) -> str:
    order = {o: i for i, o in enumerate(DISPLAY_ORDER)}
    return ", ".join(f"{n} {o}" for o, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 99)))


@dataclass
class Part:
    text: str
    nodeid: str | None = None  # the test that produced it: the cell links there
    status: str = ""  # ok | bad | warn | "" (neutral)
    title: str = ""  # hover text: the figures behind the number
    inline: bool = False  # continues the previous part's line


@dataclass
class Cell:
    parts: list[Part] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.parts

    def lines(self) -> list[str]:
        """The cell as text, one string per displayed line."""
        out: list[str] = []
        for p in self.parts:
            if p.inline and out:
                out[-1] += p.text
            else:
                out.append(p.text)
        return [x.strip() for x in out]


@dataclass
class Metric:
    """A number worth following across runs (history, trend plots, regression column)."""

    name: str  # e.g. latency.fp32.b1.ms, int8.percentile.agreement
    value: float
    kind: str  # latency | proportion | error
    label: str
    nodeid: str | None = None
    n: int | None = None  # sample count behind a proportion
    cv: float | None = None  # relative spread behind a latency
    floor: float | None = None  # noise floor behind an error

    def to_json(self) -> dict[str, Any]:
        out = {"value": self.value, "kind": self.kind, "label": self.label}
        for k in ("n", "cv", "floor"):
            v = getattr(self, k)
            if v is not None and math.isfinite(v):
                out[k] = v
        return out


@dataclass
class Row:
    """One published row of the card (source x table row) and the card-level cells for it."""

    key: str
    source: str
    name: str
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class ModelView:
    model: str
    family: str
    tests: list[dict[str, Any]]
    rows: list[Row] = field(default_factory=list)
    cells: dict[str, Cell] = field(default_factory=dict)  # model-level columns
    metrics: dict[str, Metric] = field(default_factory=dict)
    verdict: str = "passed"
    counts: dict[str, int] = field(default_factory=dict)
    weights: str | None = None
    regressions: list[Part] = field(default_factory=list)


# column key -> header; "row" columns hold one cell per published row
COLUMNS: list[tuple[str, str, str]] = [
    ("source", "source", "row"),
    ("params", "params (M) published / measured", "row"),
    ("flops", "FLOPs (G) published / measured", "row"),
    ("export", "export error vs floor", "model"),
    ("reparam", "re-param error vs floor", "model"),
    ("fp32", "fp32 top-1 (or agreement on embedded data)", "row"),
    ("int8", "int8 top-1 / agreement, drop", "model"),
    ("latency", "latency ms b1 / b4 / b8 (budget)", "model"),
    ("verdict", "verdict", "model"),
    ("regression", "regression vs previous run", "model"),
]

METHODS = ("minmax", "percentile", "entropy", "user")
GPU_RUNTIMES = ("ort-cuda", "ort-trt")  # harness/runtimes names whose latency is a GPU's (device "GPU")
LATENCY_BATCHES = (1, 4, 8)


# --- figure lookup ------------------------------------------------------------------------

def figure(test: dict[str, Any], role: str) -> tuple[str, Any] | tuple[None, None]:
    """The first figure of ``test`` feeding ``role`` (harness/figures.py): (name, value)."""
    return contract.value(test.get("figures"), role)


def number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, str):  # results.json writes inf as "inf"
        try:
            v = float(value)
        except ValueError:
            return None
        return None if math.isnan(v) else v
    return None


def num_figure(test, role: str) -> float | None:
    _, v = figure(test, role)
    return number(v)


def suite_of(test: dict[str, Any]) -> str:
    suite = test.get("suite") or test["nodeid"].split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
    return suite.removeprefix("test_")


def short_name(nodeid: str) -> str:
    return nodeid.split("::")[-1]


def model_of(test: dict[str, Any]) -> str | None:
    """The model a test ran on: its record's ``model`` field (harness/figures.py TEST_FIELDS)."""
    return str(test["model"]) if test.get("model") else None


def worst_outcome(outcomes: Iterable[str | None]) -> str:
    worst = "skipped"
    for o in outcomes:
        o = o or UNFINISHED
        if o in OUTCOME_ORDER and OUTCOME_ORDER.index(o) > OUTCOME_ORDER.index(worst):
            worst = o
    return worst


def status_of(outcome: str | None) -> str:
    if outcome in BAD:
        return "bad"
    if outcome in ("inconclusive", "xpassed", UNFINISHED):
        return "warn"
    if outcome == "xfailed":  # a known failure: amber, never green
        return "known"
    if outcome == "passed":
        return "ok"
    return ""


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return DASH
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


def proportion(test: dict[str, Any], role: str) -> float | None:
    """A proportion figure as a fraction 0-1, by the unit the contract declares for it."""
    name, v = figure(test, role)
    v = number(v)
    if v is None or name is None:
        return None
    unit = contract.unit_of(name)
    if unit in ("percent", "points"):
        return v / 100.0
    if unit == "fraction":
        return v
    return as_fraction(v)


def as_fraction(v: float | None) -> float | None:
    """Proportions arrive as 0-1 or as percent (the cards print percent): normalise to 0-1."""
    if v is None:
        return None
    return v / 100.0 if v > 1.0 else v


def pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.1f}%"


def tooltip(test: dict[str, Any], limit: int = 12) -> str:
    figs = test.get("figures") or {}
    items = [f"{k} = {v}" for k, v in list(figs.items())[:limit]]
    if len(figs) > limit:
        items.append(f"... {len(figs) - limit} more")
    head = f"{short_name(test['nodeid'])}: {test.get('outcome')}"
    return "\n".join([head, *items])


def outcome_part(tests: list[dict[str, Any]]) -> Part:
    """Fallback cell: the suite ran for this model, but no figure this column knows."""
    counts: dict[str, int] = {}
    for t in tests:
        counts[outcome_of(t)] = counts.get(outcome_of(t), 0) + 1
    worst = worst_outcome(t.get("outcome") for t in tests)
    anchor = next((t for t in tests if outcome_of(t) == worst), tests[0])
    text = counts_text(counts)
    return Part(text, anchor["nodeid"], status_of(worst), tooltip(anchor))


# --- the columns ------------------------------------------------------------------------

def _by_suite(tests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t in tests:
        out.setdefault(suite_of(t), []).append(t)
    return out


def _row_tests(tests: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Tests parametrized over this published row (their record's ``row`` field)."""
    return [t for t in tests if t.get("row") == key]


def _pub_measured(tests, pub_role: str, measured_role: str, published_default=None, digits=4) -> Cell:
    cell = Cell()
    for t in tests:
        pub = num_figure(t, pub_role)
        meas = num_figure(t, measured_role)
        if pub is None and meas is None:
            continue
        pub = pub if pub is not None else published_default
        cell.parts.append(Part(f"{printed(pub)} / {printed(meas)}", t["nodeid"], status_of(t.get("outcome")),
                               tooltip(t)))
        break
    if cell.empty and published_default is not None:
        cell.parts.append(Part(f"{printed(published_default)} / {DASH}"))
    return cell


def printed(v: float | None) -> str:
    """A card figure as the card prints it (13.187), a measured one to 4 decimals (13.1875)."""
    return DASH if v is None else f"{round(v, 4):g}"


def _not_declared_failures(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A declared known failure (e.g. the card's bilinear fusion at opset 10) is the verdict
    column's business: its figures are not the model's export error or agreement, nor a
    baseline for trends."""
    return [t for t in tests if outcome_of(t) != "xfailed"]


def _error_cell(view: ModelView, tests: list[dict[str, Any]], prefix: str) -> Cell:
    """Worst error relative to its floor over the suite's tests (export: opsets, exporters)."""
    if not tests:
        return Cell()
    scored = []
    for t in _not_declared_failures(tests):
        err = num_figure(t, "error")
        if err is None:
            continue
        floor = num_figure(t, "error_floor")
        ratio = err / floor if floor and floor > 0 else err
        scored.append((ratio, err, floor, t))
    if not scored:
        return Cell([outcome_part(tests)])
    scored.sort(key=lambda s: s[0], reverse=True)
    _, err, floor, t = scored[0]
    text = fmt(err, 2) + (f" (floor {fmt(floor, 2)})" if floor is not None else "")
    summary = outcome_part(tests).text
    parts = [Part(text, t["nodeid"], status_of(t.get("outcome")),
                  f"worst of {len(scored)} measured ({summary})\n" + tooltip(t))]
    view.metrics[f"{prefix}.error"] = Metric(f"{prefix}.error", err, "error", f"{prefix} error (worst case)",
                                             t["nodeid"], floor=floor)
    return Cell(parts)


def _method_of(test: dict[str, Any]) -> str:
    m = test.get("method") or figure(test, "method")[1]
    if isinstance(m, str) and m:
        return m.lower()
    return str(test.get("check") or short_name(test["nodeid"]).split("[")[0]).removeprefix("test_")


def _int8_cell(view: ModelView, tests: list[dict[str, Any]]) -> Cell:
    """One line per calibration method: int8 top-1 and drop (labelled) or agreement vs its floor."""
    if not tests:
        return Cell()
    cell = Cell()
    for t in tests:
        ratio = num_figure(t, "kernel_ratio")
        if ratio is not None:  # verdict (b): this host's kernels, not the model's agreement
            host = figure(t, "host_class")[1] or "this host"
            cell.parts.append(Part(f"kernels on {host}: {ratio:.2f}x the quantization error", t["nodeid"],
                                   status_of(t.get("outcome")), tooltip(t)))
            continue
        agree = proportion(t, "agreement")
        top1 = proportion(t, "int8_top1")
        if agree is None and top1 is None:
            continue
        method = _method_of(t)
        n = num_figure(t, "images")
        n = int(n) if n else None
        bits = []
        if top1 is not None:
            drop = proportion(t, "top1_drop")
            bits.append(f"{pct(top1)}" + (f" (drop {100 * drop:.2f} pt)" if drop is not None else ""))
            view.metrics[f"int8.{method}.top1"] = Metric(f"int8.{method}.top1", top1, "proportion",
                                                         f"int8 top-1 ({method})", t["nodeid"], n=n)
        if agree is not None:
            floor = proportion(t, "agreement_floor")
            bits.append(f"agree {pct(agree)}" + (f" (floor {pct(floor)})" if floor is not None else ""))
            view.metrics[f"int8.{method}.agreement"] = Metric(f"int8.{method}.agreement", agree, "proportion",
                                                              f"int8 agreement ({method})", t["nodeid"], n=n)
        cell.parts.append(Part(f"{method}: " + ", ".join(bits), t["nodeid"], status_of(t.get("outcome")), tooltip(t)))
    return _with_unlisted(cell, tests)


def _with_unlisted(cell: Cell, tests: list[dict[str, Any]]) -> Cell:
    """Add the suite's failing tests that no part of the cell links to (or, for an empty
    cell, the suite's outcomes): a red check never hides behind a green figure."""
    if not tests:
        return cell
    if cell.empty:
        cell.parts.append(outcome_part(tests))
        return cell
    linked = {p.nodeid for p in cell.parts}
    bad = [t for t in tests if status_of(t.get("outcome")) in ("bad", "warn") and t["nodeid"] not in linked]
    if bad:
        worst = worst_outcome(t.get("outcome") for t in bad)
        cell.parts.append(Part(f"+{len(bad)} {worst}: {short_name(bad[0]['nodeid']).split('[')[0]}"
                               + (" ..." if len(bad) > 1 else ""), bad[0]["nodeid"], status_of(worst), tooltip(bad[0])))
    return cell


def _latency_key(test: dict[str, Any]) -> tuple[str | None, int | None]:
    """(precision, batch) of a latency test: its record's fields, else the figures feeding them."""
    prec = test.get("precision") or figure(test, "precision")[1]
    batch = test.get("batch")
    if batch is None:
        batch = num_figure(test, "batch")
    if not isinstance(prec, str):
        return None, None
    prec = prec.lower()
    provider = test.get("runtime") or figure(test, "provider")[1]
    if isinstance(provider, str) and (provider in GPU_RUNTIMES or (provider.endswith("ExecutionProvider")
                                                                   and provider != "CPUExecutionProvider")):
        # GPU measurements get their own lines: never mixed with the CPU figures of that batch
        # (CPU runtimes other than the first get views of their own: runtime_views)
        prec = f"{provider.removesuffix('ExecutionProvider')} {prec}"
    return prec, (int(batch) if batch is not None else None)


def _latency_cell(view: ModelView, tests: list[dict[str, Any]]) -> Cell:
    if not tests:
        return Cell()
    grid: dict[tuple[str, int], tuple[float, float | None, dict]] = {}
    for t in tests:
        ms = num_figure(t, "latency_ms")
        if ms is None:
            continue
        prec, batch = _latency_key(t)
        if prec is None or batch is None:
            continue
        key = (prec, batch)
        if key in grid and status_of(grid[key][2].get("outcome")) == "bad":
            continue  # keep the failing measurement visible
        grid[key] = (ms, num_figure(t, "budget_ms"), t)
        cv = num_figure(t, "latency_cv")
        if cv is None:
            iqr = num_figure(t, "latency_iqr_ms")
            cv = iqr / 1.349 / ms if iqr is not None and ms > 0 else None  # IQR of a normal = 1.349 sigma
        if figure(t, "quiet")[1] is False:
            continue  # measured under contention: shown, but no point on a trend, no baseline
        name = f"latency.{re.sub(r'[^a-z0-9]+', '_', prec.lower())}.b{batch}.ms"
        view.metrics[name] = Metric(name, ms, "latency", f"{prec} b{batch} ms", t["nodeid"], cv=cv)
    if not grid:
        return Cell([outcome_part(tests)])
    cell = Cell()
    precs = [p for p in PRECISIONS if any(k[0] == p for k in grid)] + \
            sorted({k[0] for k in grid} - set(PRECISIONS))
    batches = sorted({k[1] for k in grid} | set(LATENCY_BATCHES))
    for prec in precs:
        # one line per precision: "fp32 4.8 / 19 / 38 (12 / 48 / 96)", each number its own link
        cell.parts.append(Part(f"{prec} "))
        budgets = []
        for b in batches:
            if len(cell.parts) > 1 and not cell.parts[-1].text.endswith(" "):
                cell.parts.append(Part(" / ", inline=True))
            if (prec, b) not in grid:
                cell.parts.append(Part(DASH, inline=True))
                budgets.append(DASH)
                continue
            ms, budget, t = grid[(prec, b)]
            over = budget is not None and ms > budget
            status = "bad" if status_of(t.get("outcome")) == "bad" or over else status_of(t.get("outcome"))
            cell.parts.append(Part(fmt(ms, 3), t["nodeid"], status,
                                   f"{prec} batch {b}: {fmt(ms, 3)} ms, budget {fmt(budget, 3)} ms\n" + tooltip(t),
                                   inline=True))
            budgets.append(fmt(budget, 3) if budget is not None else DASH)
        if any(x != DASH for x in budgets):
            cell.parts.append(Part(f" ({' / '.join(budgets)})", None, "", "budgets (ms)", inline=True))
    return cell


def _fp32_row_cell(view: ModelView, row_tests: list[dict[str, Any]], published: float | None) -> Cell:
    """Published top-1 of the row / measured top-1 of each runner held to that row."""
    pub_text = DASH if published is None else f"{published:g}%"
    parts = []
    for t in row_tests:
        top1 = proportion(t, "top1")
        if top1 is None:
            continue
        pub = proportion(t, "top1_published")
        if pub is not None:
            pub_text = f"{100 * pub:g}%"
        _, runner = figure(t, "runner")
        if not runner:
            runner = str(t.get("check") or short_name(t["nodeid"]).split("[")[0]).removeprefix("test_")
        runner = str(runner)
        key = re.sub(r"[^a-z0-9]+", "_", runner.lower()).strip("_")
        n = num_figure(t, "images")
        view.metrics[f"fp32.top1.{key}"] = Metric(f"fp32.top1.{key}", top1, "proportion", f"top-1 {runner}",
                                                  t["nodeid"], n=int(n) if n else None)
        parts.append(Part(f"{runner} {pct(top1)}", t["nodeid"], status_of(t.get("outcome")), tooltip(t)))
    if not parts:
        return Cell([Part(f"{pub_text} / {DASH}")]) if published is not None else Cell()
    return Cell([Part(f"{pub_text} /")] + parts)


def _agreement_cell(view: ModelView, tests: list[dict[str, Any]]) -> Cell:
    """fp32 on the embedded default (no labels): ONNX vs torch top-1 agreement (the lowest)."""
    best = None
    for t in _not_declared_failures(tests):
        a = proportion(t, "agreement")
        if a is not None and (best is None or a < best[0]):
            best = (a, t)
    if best is None:
        return Cell()
    a, t = best
    n = num_figure(t, "images")
    view.metrics["fp32.agreement"] = Metric("fp32.agreement", a, "proportion", "fp32 ONNX vs torch agreement",
                                            t["nodeid"], n=int(n) if n else None)
    return Cell([Part(f"agreement {pct(a)}", t["nodeid"], status_of(t.get("outcome")), tooltip(t))])


def _claims_row(test: dict[str, Any], name: str, sources: str) -> bool:
    """The accuracy suite names the published row it holds the model to (claimed_row)."""
    if figure(test, "claimed_row")[1] != name:
        return False
    claimed = figure(test, "claimed_sources")[1]
    return not claimed or "+".join(claimed) == sources


# --- assembling ---------------------------------------------------------------------------

def build_views(doc: dict[str, Any], zoo: dict | None = None) -> tuple[list[ModelView], list[dict[str, Any]]]:
    """One view per model in the results (zoo order where known), plus the tests of no model."""
    if zoo is None:
        zoo = _load_zoo()
    known = list(zoo) + [m for m in (doc.get("settings") or {}).get("models") or [] if m not in zoo]
    by_model: dict[str, list[dict[str, Any]]] = {}
    orphans = []
    for t in doc.get("tests", []):
        # an older results.json: figure names of then -> today's, structured fields it lacked
        t = {**contract.legacy_fields(t, known), **t, "figures": contract.canonical(t.get("figures"))}
        m = model_of(t)
        if m is None:
            orphans.append(t)
        else:
            by_model.setdefault(m, []).append(t)
    order = [m for m in known if m in by_model] + [m for m in by_model if m not in known]
    return [v for m in order for v in runtime_views(m, by_model[m], zoo.get(m))], orphans


def runtime_of(test: dict[str, Any]) -> str | None:
    """The runtime a test ran on (its ``runtime`` field or figure; ``--runtime``), or None."""
    r = test.get("runtime") or (test.get("figures") or {}).get("runtime")
    return str(r) if r else None


def runtime_views(model: str, tests: list[dict[str, Any]], card=None) -> list[ModelView]:
    """One view of ``model``, or one per runtime when its tests ran on several (``--runtime
    ort,openvino,torch``): the family tables get a row per runtime, named ``model · runtime``.
    Tests of no runtime (card, preprocessing, cross-runtime agreement) go with the first."""
    names: list[str] = []
    for t in tests:
        r = runtime_of(t)
        if r and r not in names:
            names.append(r)
    if len(names) < 2:
        return [model_view(model, tests, card)]
    views = []
    for r in names:
        mine = [t for t in tests if runtime_of(t) == r or (r == names[0] and runtime_of(t) is None)]
        view = model_view(model, mine, card)
        view.model = f"{model} · {r}"
        views.append(view)
    return views


def _load_zoo() -> dict:
    try:
        from ..zoo import load_zoo

        return load_zoo()
    except Exception:  # a report must render from results.json alone, even with a broken registry
        return {}


def model_view(model: str, tests: list[dict[str, Any]], card=None) -> ModelView:
    family = card.family if card is not None else next((str(t["family"]) for t in tests if t.get("family")), "other")
    view = ModelView(model, family, tests)
    suites = _by_suite(tests)
    for t in tests:
        o = outcome_of(t)
        view.counts[o] = view.counts.get(o, 0) + 1
    view.verdict = worst_outcome(t.get("outcome") for t in tests)
    for t in tests:
        w = figure(t, "weights")[1]
        if isinstance(w, str):
            view.weights = w
            break

    # published rows: from the card where known, else from the card suite tests' row fields
    card_tests = suites.get("card", [])
    acc_tests = [t for t in suites.get("accuracy", []) if proportion(t, "top1") is not None]
    if card is not None and card.published:
        rows = [(row_id(r), "+".join(r.sources), r.name, r) for r in card.published]
    else:
        keys = []
        for t in card_tests:
            if t.get("row") and t["row"] not in keys:
                keys.append(str(t["row"]))
        rows = [(k, k.split("-")[0], k, None) for k in keys]
    if not rows:
        rows = [("", DASH, "", None)]
    for key, source, name, pub in rows:
        row = Row(key, source, name)
        rt_card = _row_tests(card_tests, key) if key else []
        rt_acc = [t for t in acc_tests if _claims_row(t, name, source)]
        row.cells["source"] = Cell([Part(source, None, "", name)])
        row.cells["params"] = _pub_measured([t for t in rt_card if figure(t, "params_measured")[0]],
                                            "params_published", "params_measured", getattr(pub, "params_m", None))
        flops_tests = [t for t in rt_card if figure(t, "flops_published")[0]]
        row.cells["flops"] = _pub_measured(flops_tests, "flops_published", "flops_measured",
                                           getattr(pub, "flops_g", None))
        if flops_tests and figure(flops_tests[0], "flops_measured")[1] is None:
            # convention not identified: show what was counted so the gap is visible
            t = flops_tests[0]
            gmacs = num_figure(t, "gmacs_measured")
            row.cells["flops"] = Cell([Part(f"{printed(num_figure(t, 'flops_published'))} / {DASH}"
                                            + (f" ({printed(gmacs)} GMACs)" if gmacs is not None else ""),
                                            t["nodeid"], status_of(t.get("outcome")), tooltip(t))])
        if acc_tests:
            row.cells["fp32"] = _fp32_row_cell(view, rt_acc, getattr(pub, "top1", None))
        elif pub is not None and pub.top1 is not None:
            row.cells["fp32"] = Cell([Part(f"{pub.top1:g}% / {DASH}")])
        view.rows.append(row)
    if not acc_tests:
        # embedded default: fp32 agreement ONNX vs torch, shown once for the model
        agreement = _agreement_cell(view, suites.get("export", []) or suites.get("accuracy", []))
        if not agreement.empty:
            view.cells["fp32"] = agreement

    view.cells["export"] = _with_unlisted(_error_cell(view, suites.get("export", []), "export"), suites.get("export", []))
    view.cells["reparam"] = _with_unlisted(_error_cell(view, suites.get("reparam", []), "reparam"),
                                           suites.get("reparam", []))
    view.cells["int8"] = _int8_cell(view, suites.get("quant", []))
    view.cells["latency"] = _with_unlisted(_latency_cell(view, suites.get("latency", [])), suites.get("latency", []))
    # figures of a test that could not judge (contention, degenerate model) or did not finish
    # are shown, but are no point on a trend and no baseline for the next run (a skipped test
    # that measured, e.g. latency with no budget profile, still counts)
    unjudged = {t["nodeid"] for t in tests if outcome_of(t) in ("inconclusive", UNFINISHED)}
    view.metrics = {k: m for k, m in view.metrics.items() if m.nodeid not in unjudged}
    bad = [t for t in tests if outcome_of(t) == view.verdict]
    view.cells["verdict"] = Cell([Part(_verdict_text(view), bad[0]["nodeid"] if bad and view.verdict != "passed" else None,
                                       status_of(view.verdict), "\n".join(short_name(t["nodeid"]) for t in bad[:10]))])
    return view


def _verdict_text(view: ModelView) -> str:
    label = {"passed": "pass", "failed": "FAIL", "error": "ERROR", "inconclusive": "inconclusive",
             "xfailed": "pass (known failures)", "xpassed": "XPASS", "skipped": "skipped",
             NOT_APPLICABLE: "not applicable",
             UNFINISHED: "unfinished"}[view.verdict]
    counts = counts_text(view.counts)
    return f"{label} ({counts})"


def row_id(row) -> str:
    """The case id suffix of a published row, as ``harness.plugin.row_id`` writes it (kept
    here so that rendering a report never imports the plugin, and with it torch)."""
    return f"{'+'.join(row.sources)}-{row.seed}-{row.name}"


def model_record(view: ModelView, doc: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The history line for one model of one run."""
    machine = doc.get("machine") or {}
    settings = doc.get("settings") or {}
    return {
        "schema": "zooconform.history/1",
        "run_id": run_id,
        "started_utc": doc.get("started_utc"),
        "complete": bool(doc.get("complete")),
        "tier": settings.get("tier"),
        "model": view.model,
        "family": view.family,
        "verdict": view.verdict,
        "counts": view.counts,
        "machine": {k: machine.get(k) for k in ("hostname", "cpu", "cores", "gpu", "host_class")},
        "threads": settings.get("threads"),
        "profile": settings.get("profile"),
        "data": "imagenet" if settings.get("imagenet") else "embedded",
        "versions": doc.get("versions") or {},
        # an infinite error is a failing test (in "failing"), not a point on a trend
        "metrics": {k: m.to_json() for k, m in sorted(view.metrics.items()) if math.isfinite(m.value)},
        "failing": sorted(t["nodeid"] for t in view.tests if outcome_of(t) in BAD),
        # short digests: enough to tell "passed last time, fails now" from a new test
        "passed_digests": sorted(nodeid_digest(t["nodeid"]) for t in view.tests if t.get("outcome") == "passed"),
    }


def nodeid_digest(nodeid: str) -> str:
    return hashlib.sha1(nodeid.encode("utf-8")).hexdigest()[:10]
