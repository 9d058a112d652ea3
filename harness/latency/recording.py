"""Recording a latency budget profile from quiet runs, the run-to-run summary (flake check)
and the seeds' T4 TensorRT table as a profile. ``zooconform budgets`` (harness/commands/budgets.py)
is the command line over these."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..figures import canonical
from ..zoo import load_zoo
from .budgets import PRECISIONS, PROVIDER_RUNTIMES


@dataclass
class Cell:
    medians: list[float] = field(default_factory=list)
    contended: int = 0


def _latency_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Figures of the absolute latency / throughput measurements of a results.json or a
    pytest-benchmark JSON (whose ``extra_info`` carries the same figures)."""
    if "benchmarks" in doc:  # pytest-benchmark --benchmark-json
        return [dict(b.get("extra_info") or {}) for b in doc["benchmarks"]]
    out = []
    for t in doc.get("tests", []):
        figs = canonical(t.get("figures"))  # older figure names -> today's (harness/figures.py)
        figs.setdefault("model", t.get("model"))
        out.append(figs)
    return out


def _machine_of(doc: dict[str, Any]) -> dict[str, Any]:
    if "benchmarks" in doc:
        mi = doc.get("machine_info") or {}
        return {"cpu": (mi.get("cpu") or {}).get("brand_raw", ""), "cores": (mi.get("cpu") or {}).get("count")}
    return doc.get("machine") or {}


def collect(docs: list[dict[str, Any]]) -> tuple[dict[tuple[Any, ...], Cell], dict[str, Cell], dict[str, Any]]:
    """(latency cells keyed (model, precision, batch), throughput cells per model, settings)."""
    cells: dict[tuple[Any, ...], Cell] = {}
    tput: dict[str, Cell] = {}
    seen: dict[str, set[Any]] = {"runtime": set(), "threads": set(), "instances": set(), "peak": set(),
                            "int8_peak": set(), "host_class": set()}
    for doc in docs:
        m = _machine_of(doc)
        if m.get("host_class"):
            seen["host_class"].add(m["host_class"])
        if m.get("peaks_quiet"):
            if m.get("fp32_peak_gflops"):
                seen["peak"].add(m["fp32_peak_gflops"])
            if m.get("int8_peak_gops"):
                seen["int8_peak"].add(m["int8_peak_gops"])
        for f in _latency_records(doc):
            kind = f.get("latency_kind")
            if kind not in ("absolute", "throughput") or not f.get("model"):
                continue
            seen["runtime"].add(f.get("runtime") or PROVIDER_RUNTIMES.get(f.get("provider") or "", f.get("provider")))
            seen["threads"].add(f.get("threads"))
            if f.get("peak_gflops") and f.get("peak_quiet"):
                seen["peak"].add(f["peak_gflops"])
            if f.get("host_class"):
                seen["host_class"].add(f["host_class"])
            if f.get("host_int8_peak_gops") and f.get("host_peaks_quiet"):
                seen["int8_peak"].add(f["host_int8_peak_gops"])
            if kind == "absolute":
                key = (f["model"], f.get("precision"), int(f.get("batch") or 0))
                cell = cells.setdefault(key, Cell())
                value = f.get("median_ms")
            else:
                seen["instances"].add(f.get("instances"))
                cell = tput.setdefault(f["model"], Cell())
                value = f.get("images_per_s")
            if f.get("quiet") is True and isinstance(value, (int, float)):
                cell.medians.append(float(value))
            else:
                cell.contended += 1
    return cells, tput, seen


def _fmt(x: float) -> str:
    return f"{x:.4g}" if x < 100 else f"{x:.1f}"


def profile_text(docs: list[dict[str, Any]], name: str, headroom: float, description: str = "",
                 sources: list[str] | None = None) -> tuple[str, list[str]]:
    """TOML text of a profile recorded from runs, and the report lines (spread, gaps)."""
    if not headroom >= 1.0:
        raise ValueError(f"headroom must be >= 1, got {headroom}")
    cells, tput, seen = collect(docs)
    if not cells and not tput:
        raise ValueError("no absolute latency measurements in these files (run pytest suites -m latency)")
    runtimes = {p for p in seen["runtime"] if p}
    threads = {t for t in seen["threads"] if t}
    if len(runtimes) > 1 or len(threads) > 1:
        raise ValueError(f"runs mix runtimes {sorted(runtimes)} / threads {sorted(threads)}: record one setting at a time")
    classes = sorted(seen["host_class"])
    if len(classes) > 1:
        raise ValueError(f"runs come from hosts of different classes {classes}: record one host class at a time")
    machine = _machine_of(docs[0]) if docs else {}
    report: list[str] = []
    default_description = f"recorded on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
    lines = [f"# Latency budget profile '{name}', recorded by zooconform budgets record from",
             f"# {', '.join(sources or ['runs'])}: per cell the slowest quiet median x headroom {headroom}.",
             "[profile]",
             f"description = {json.dumps(description or default_description)}",
             f'runtime = "{next(iter(runtimes), "ort")}"']
    if threads:
        lines.append(f"threads = {next(iter(threads))}")
    lines += ["provisional = false",
              f"source = {json.dumps(f'{len(docs)} run(s): ' + ', '.join(sources or []))}",
              f"headroom = {headroom}"]
    peaks = sorted(seen["peak"])
    if peaks:
        lines.append(f"peak_gflops = {_fmt(max(peaks))}")
        report.append(f"fp32 peak: {', '.join(_fmt(x) for x in peaks)} GFLOP/s (quiet): {_fmt(max(peaks))} recorded")
    else:
        report.append("no quiet fp32 peak in these runs: peak_gflops left out, so the profile applies nowhere; "
                      "re-run on a quiet machine")
    int8_peaks = sorted(seen["int8_peak"])
    if int8_peaks:
        lines.append(f"int8_peak_gops = {_fmt(max(int8_peaks))}")
        report.append(f"int8 peak: {', '.join(_fmt(x) for x in int8_peaks)} GOP/s (quiet): {_fmt(max(int8_peaks))} recorded")
    inst = {i for i in seen["instances"] if i}
    if len(inst) == 1:
        lines.append(f"instances = {next(iter(inst))}")
    if classes or machine.get("cpu") or machine.get("cores"):
        lines += ["", "[profile.match]"]
        if classes:
            lines.append(f"host_class = {json.dumps(classes[0])}")
        if machine.get("cpu"):
            lines.append(f"cpu = {json.dumps(machine['cpu'])}")
        if machine.get("cores"):
            lines.append(f"cores = {machine['cores']}")
    if not classes:
        report.append("no host class in these runs (results.json from before the machine fingerprint): add "
                      "[profile.match] host_class by hand, or the profile applies nowhere")
    models = sorted({k[0] for k in cells} | set(tput))
    for model in models:
        lines += ["", f"[models.{model}]"]
        for prec in PRECISIONS:
            entries = []
            for (m, p, b), cell in sorted(cells.items()):
                if m != model or p != prec:
                    continue
                if not cell.medians:
                    report.append(f"{model} {prec} b{b}: no quiet measurement ({cell.contended} contended): left out")
                    continue
                spread = max(cell.medians) / min(cell.medians) - 1
                report.append(f"{model} {prec} b{b}: medians {', '.join(_fmt(x) for x in cell.medians)} ms; "
                              f"run-to-run spread {spread:.1%}; budget {_fmt(max(cell.medians) * headroom)} ms")
                entries.append(f"b{b} = {_fmt(max(cell.medians) * headroom)}")
            if entries:
                lines.append(f"{prec} = {{ {', '.join(entries)} }}")
        tcell = tput.get(model)
        if tcell is not None:
            if tcell.medians:
                lines.append(f"throughput_ips = {_fmt(min(tcell.medians) / headroom)}")
                report.append(f"{model} throughput: {', '.join(_fmt(x) for x in tcell.medians)} images/s")
            else:
                report.append(f"{model} throughput: no quiet measurement: left out")
    return "\n".join(lines) + "\n", report


def runs_summary(docs: list[dict[str, Any]], names: list[str] | None = None) -> list[str]:
    """One line per latency test over several runs: outcomes, the judged figure per run and
    its run-to-run spread (max / min - 1): what the 3x flake check reports."""
    names = names or [f"run{i + 1}" for i in range(len(docs))]
    rows: dict[str, list[tuple[str, float | None, str, bool]]] = {}
    for doc in docs:
        for t in doc.get("tests", []):
            if "test_latency.py" not in t.get("nodeid", ""):
                continue
            f = canonical(t.get("figures"))
            for key, unit in (("median_ms", "ms"), ("ratio", "x"), ("images_per_s", "img/s")):
                if isinstance(f.get(key), (int, float)):
                    rows.setdefault(t["nodeid"].split("::", 1)[-1], []).append(
                        (t.get("outcome") or "?", float(f[key]), unit, f.get("quiet") is not False))
                    break
            else:
                rows.setdefault(t["nodeid"].split("::", 1)[-1], []).append((t.get("outcome") or "?", None, "", True))
    out = [f"{len(docs)} run(s): {', '.join(names)}  (* = measured under contention)"]
    for test, runs in rows.items():
        values = [v for _, v, _, _ in runs if v is not None]
        unit = next((u for _, v, u, _ in runs if v is not None), "")
        spread = f"; spread {max(values) / min(values) - 1:.1%}" if len(values) > 1 and min(values) > 0 else ""
        shown = " / ".join(f"{o} {_fmt(v)}{'' if q else '*'}" if v is not None else o for o, v, _, q in runs)
        out.append(f"{test}: {shown} {unit}{spread}")
    return out


# --- the seeds' T4 TensorRT table -----------------------------------------------------------

def t4_tensorrt_text(zoo: dict[str, Any] | None = None) -> str:
    """The ``t4-tensorrt`` profile from the registry's seed-002 (PaddleClas) rows."""

    zoo = zoo if zoo is not None else load_zoo()
    lines = ["# The seeds' T4 TensorRT latency table (seed 002, PaddleClas HRNet page) as budgets.",
             "# Generated from fixtures/zoo/hrnet.toml (PublishedRow.latency_ms of the ppcls seed-002 rows)",
             "# by zooconform budgets t4 --out fixtures/budgets/t4-tensorrt.toml; do not edit by hand.",
             "# The page has two FP32 tables that disagree (e.g. HRNet_W18_C b1 6.66 vs 7.40636 ms); the budget",
             "# is the slower of the two, the figure both tables support. SE_HRNet_W64_C_ssld (an SE variant,",
             "# not timm's hrnet_w64) and the ssld rows (same architecture, same figures) are left out.",
             "[profile]",
             'description = "NVIDIA T4, TensorRT, as published by PaddleClas (seed 002)"',
             'provider = "TensorrtExecutionProvider"',
             "provisional = false",
             'source = "seed 002 (../shared/seeds/002_6769bbe7f0604747.txt) via fixtures/zoo/hrnet.toml"',
             "headroom = 1.0", "", "[profile.match]", 'gpu = "*T4*"']
    for card in zoo.values():
        rows = [r for r in card.published if r.seed == "002" and "ppcls" in r.sources and r.weights is None
                and r.latency_ms]
        if not rows:
            continue
        row = rows[0]
        batches = row.latency_batches
        lines += ["", f"[models.{card.id}]", f'note = "{row.name}"']
        fp32 = [max(vals) for vals in zip(*(row.latency_ms[k] for k in row.latency_ms if k.startswith("t4_trt_fp32")))]
        lines.append("fp32 = { " + ", ".join(f"b{b} = {float(ms)!r}" for b, ms in zip(batches, fp32)) + " }")
        if "t4_trt_fp16" in row.latency_ms:
            fp16 = row.latency_ms["t4_trt_fp16"]
            lines.append("fp16 = { " + ", ".join(f"b{b} = {float(ms)!r}" for b, ms in zip(batches, fp16)) + " }")
    return "\n".join(lines) + "\n"
